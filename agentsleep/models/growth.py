"""Function-preserving block growth (LLaMA-Pro style) for Llama-family models.

A copied decoder block whose attention output (o_proj) and MLP output
(down_proj) are zero adds exactly nothing to the residual stream, so the grown
model computes the same function; training then gives the new blocks their
own capacity. On transformers 5.x the config's num_hidden_layers and
layer_types must follow, and every layer's layer_idx must be renumbered or
the KV cache is corrupted.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from ..errors import ModelError

SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")


def _layers(model: Any):
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or model.config.model_type not in SUPPORTED:
        raise ModelError(f"grow: model type '{model.config.model_type}' is not supported "
                         f"(supported: {', '.join(SUPPORTED)})")
    return layers


def grow(model: Any, n_new: int) -> list[int]:
    """Insert `n_new` identity blocks, spread evenly; returns their indices in the grown model."""
    if n_new < 1:
        raise ModelError(f"grow: the number of new blocks must be at least 1, got {n_new}")
    layers = _layers(model)
    n_old = len(layers)
    # after which original layers to insert: evenly spaced, the last one always included
    after = sorted({round((i + 1) * n_old / n_new) - 1 for i in range(n_new)})
    while len(after) < n_new:
        after.append(n_old - 1)
    new_list, new_idx = [], []
    for i, layer in enumerate(layers):
        new_list.append(layer)
        for _ in range(after.count(i)):
            block = copy.deepcopy(layer)
            with torch.no_grad():
                for lin in (block.self_attn.o_proj, block.mlp.down_proj):
                    lin.weight.zero_()
                    if lin.bias is not None:
                        lin.bias.zero_()
            new_idx.append(len(new_list))
            new_list.append(block)
    model.model.layers = torch.nn.ModuleList(new_list)
    cfg = model.config
    if getattr(cfg, "layer_types", None):
        types = list(cfg.layer_types)
        for j in new_idx:
            types.insert(j, types[min(j - 1, len(types) - 1)])
        cfg.layer_types = types
    cfg.num_hidden_layers = len(new_list)
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = i
    return new_idx


def layer_map(new_idx: list[int], n_layers: int) -> list[list[Any]]:
    """For each layer of the grown model, where it comes from: ``["keep", j]`` (the parent's layer j) or
    ``["copy", j]`` (a copy of j with o_proj/down_proj zeroed, as `grow` inserts). A grown version
    stores this map instead of weights (models/deltas.regrow replays it)."""
    out, src = [], -1
    for i in range(n_layers):
        if i in new_idx:
            out.append(["copy", src])
        else:
            src += 1
            out.append(["keep", src])
    return out


def layer_count(model: Any) -> int:
    return len(_layers(model))
