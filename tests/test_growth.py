"""Function-preserving growth: exact same logits and cached generation; registry version; refusal."""
import pytest
import torch

from agentsleep.config import Config
from agentsleep.errors import ModelError
from agentsleep.home import Home
from agentsleep.models.growth import grow, layer_count
from agentsleep.models.loader import load
from tiny import tiny_model_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("models"), layers=3)


def test_grow_preserves_function_exactly(tiny):
    model, tok = load(str(tiny))
    # make the weights non-trivial so a wrong insertion would show
    ids = tok(["The user's dog is called Biscuit and", "Hello"], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**ids).logits
        gen_before = model.generate(**ids, max_new_tokens=8, do_sample=False)
    new = grow(model, 2)
    assert layer_count(model) == 5 == model.config.num_hidden_layers and len(new) == 2
    assert [l.self_attn.layer_idx for l in model.model.layers] == list(range(5))
    with torch.no_grad():
        after = model(**ids).logits
        gen_after = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert (after - before).abs().max().item() == 0.0
    assert torch.equal(gen_before, gen_after)


def test_grow_command_publishes_version_and_next_sleep_targets_new_blocks(tiny, tmp_path):
    root = Home.init(tmp_path / "h", config=Config.model_validate({"model": {"base": str(tiny)}}))
    with Home.open(root) as h:
        v = h.grow(1)
        assert v.name == "v0001" and h.registry.current_name() == "v0001"
        assert v.manifest["kind"] == "grow" and v.manifest["layers"] == {"before": 3, "after": 4}
        m, _ = load(v.weights)
        assert layer_count(m) == 4
    from peft import get_peft_model

    from agentsleep.config import SeedConfig
    from agentsleep.sleep.seed import lora_config
    pm = get_peft_model(m, lora_config(SeedConfig(lora_r=2), v.manifest["new_layers"]))
    trained = {n.split(".layers.")[1].split(".")[0] for n, p in pm.named_parameters() if p.requires_grad}
    assert trained == {str(i) for i in v.manifest["new_layers"]}


def test_grow_refuses_other_architectures(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(ModelError, match="not supported"):
        grow(m, 1)
    with pytest.raises(ModelError):
        grow(m, 0)
