"""The staged reload's shadow model (adapters/vllm_reload.py) on plain torch modules: the shadow
owns its weights (the served ones are untouched until the commit), ties hold, and the commit
swaps or copies every tensor and carries over what processing replaced. The end-to-end path
on a real vLLM server is in tests/test_vllm_serving.py."""
from __future__ import annotations

import pytest
import torch

from agentsleep.adapters.vllm_reload import commit_shadow, shadow_model


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.proj = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight          # tied, as in SmolLM2
        self.register_buffer("scale", torch.ones(4))
        self.proj.weight.weight_loader = "loader-attr"  # vLLM keeps loader metadata on parameters
        self.proj.cpu_linear = "old-kernel"             # stands for a repacked oneDNN handle

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(self.embed(ids)) * self.scale)


@pytest.mark.parametrize("copy_into", [False, True])
def test_shadow_is_private_until_commit(copy_into):
    torch.manual_seed(0)
    live = Tiny()
    ids = torch.tensor([[1, 2, 3]])
    before = live(ids).detach().clone()
    live_params = {n: p for n, p in live.named_parameters()}
    storage = {n: p.data_ptr() for n, p in live_params.items()}

    shadow, pairs = shadow_model(live)
    assert len(pairs) == len(list(live.modules()))
    assert shadow.head.weight is shadow.embed.weight                  # the tie holds in the shadow
    assert shadow.proj.weight is not live.proj.weight
    assert shadow.proj.weight.weight_loader == "loader-attr"
    with torch.no_grad():                                             # "reload" the shadow
        for p in shadow.parameters():
            p.add_(1.0)
        shadow.scale.mul_(2.0)
    shadow.proj.cpu_linear = "new-kernel"
    assert torch.equal(live(ids), before)                             # served weights untouched
    assert live.proj.cpu_linear == "old-kernel"

    expected = shadow(ids).detach().clone()
    n = commit_shadow(pairs, copy_into=copy_into)
    assert n == 5                                     # embed and head (one tensor, met twice), proj w+b, scale
    assert torch.allclose(live(ids), expected)
    assert live.proj.cpu_linear == "new-kernel"
    assert {n: p for n, p in live.named_parameters()} == live_params  # same Parameter objects
    same_storage = all(p.data_ptr() == storage[n] for n, p in live.named_parameters())
    assert same_storage is copy_into                                  # copied into place, or pointed at the shadow's


def test_commit_refuses_a_dtype_change():
    live = Tiny()
    shadow, pairs = shadow_model(live)
    shadow.proj.weight.data = shadow.proj.weight.data.double()
    before = live.proj.bias.data_ptr()
    with pytest.raises(RuntimeError, match="float64"):
        commit_shadow(pairs, copy_into=False)
    assert live.proj.bias.data_ptr() == before  # nothing was half-committed
