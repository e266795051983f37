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


def _layer_of(name: str) -> int | None:
    return int(name.split(".layers.")[1].split(".")[0]) if ".layers." in name else None


def _grown(tiny, blocks=2):
    model, tok = load(str(tiny))
    new = grow(model, blocks)
    assert new == [2, 4]  # one block in the middle of the 3-layer model, one at the top
    return model, tok, new


def test_grown_blocks_receive_the_gradient_and_old_blocks_get_no_expert(tiny):
    """The expert a sleep attaches after growth (lora_config with the new layers, as the pipeline passes
    the grow manifest's new_layers): attached, the grown model computes what the base did; the old
    blocks carry no LoRA; the first step already trains both LoRA factors of the new blocks' zeroed
    output projections, and after one step every LoRA tensor of a new block (q/k/v, gate/up included)
    gets a non-zero gradient. No base weight changes."""
    from peft import get_peft_model

    from agentsleep.config import SeedConfig
    from agentsleep.sleep.objective import lora_config
    from agentsleep.sleep.tensors import ce_picked, collate, encode, forward_picked

    base, tok = load(str(tiny))
    model, tok, new = _grown(tiny)
    batch = collate([encode(tok, "What is my dog's name?", "Biscuit, a beagle."),
                     encode(tok, "", "The user's dog is a beagle called Biscuit.")], tok.pad_token_id)
    torch.manual_seed(0)
    pm = get_peft_model(model, lora_config(SeedConfig(lora_r=4), new))
    with torch.no_grad():
        want = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (got - want).abs().max().item() < 1e-5  # same function with the expert attached
    lora = {n: p for n, p in pm.named_parameters() if "lora_" in n}
    assert {_layer_of(n) for n in lora} == set(new)  # no expert on the old blocks 0, 1, 3
    assert all(p.requires_grad for p in lora.values())
    assert not [n for n, p in pm.named_parameters() if p.requires_grad and "lora_" not in n]
    base_w = {n: p.detach().clone() for n, p in pm.named_parameters() if "lora_" not in n}
    opt = torch.optim.AdamW(list(lora.values()), lr=1e-3)
    pm.train()

    def step():
        loss = ce_picked(*forward_picked(pm, batch)[:2])
        opt.zero_grad()
        loss.backward()
        return {n: float(p.grad.abs().sum()) if p.grad is not None else 0.0 for n, p in lora.items()}

    g0 = step()
    for i in new:  # what the new block writes to the residual stream through: both factors learn at once
        for proj in ("self_attn.o_proj", "mlp.down_proj"):
            for f in ("A", "B"):
                assert g0[f"base_model.model.model.layers.{i}.{proj}.lora_{f}.default.weight"] > 0, (i, proj, f)
    opt.step()
    g1 = step()
    dead = sorted(n for n, g in g1.items() if not g > 0)
    assert not dead, dead
    opt.step()
    assert all(torch.equal(p.detach(), base_w[n]) for n, p in pm.named_parameters() if "lora_" not in n)


def test_seeding_after_growth_changes_only_the_new_blocks(tiny):
    """seed() with the grow manifest's new layers (what the sleep pipeline passes): merged, the expert
    changed the new blocks' zeroed output projections and left every old block's weights as they were."""
    from agentsleep.config import SeedConfig
    from agentsleep.sleep.seed import seed
    from agentsleep.sleep.types import Dream, Memory

    model, tok, new = _grown(tiny)
    grown = {n: p.detach().clone() for n, p in model.named_parameters()}
    mem = [Memory("e1", "The user's dog is a beagle called Biscuit.")]
    cfg = SeedConfig(lora_r=4, epochs=3, min_steps=0, batch_size=2, replay_prompts=0, min_dreams_per_episode=0)
    pm, stats = seed(model, tok, [Dream("e1", "What is my dog's name?", "Biscuit")], mem, cfg, layers=new)
    assert stats.steps >= 3
    merged = {n: p.detach() for n, p in pm.merge_and_unload().named_parameters()}
    assert merged.keys() == grown.keys()
    changed = {n for n in grown if not torch.equal(merged[n], grown[n])}
    assert changed and {_layer_of(n) for n in changed} == set(new), sorted(changed)
    for i in new:
        for proj in ("self_attn.o_proj", "mlp.down_proj"):
            w = merged[f"model.layers.{i}.{proj}.weight"]
            assert w.abs().sum() > 0, (i, proj)  # was exactly zero after growth
