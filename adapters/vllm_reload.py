"""Staged same-shape weight reloads inside a vLLM worker: build the new weights beside the old, then swap.

vLLM's own in-place reload (``collective_rpc reload_weights``) turns every layer
back into checkpoint format on the meta device, loads and re-processes it
(on CPU: repacks each linear layer for oneDNN). The model cannot answer while
that runs, so requests are held for the whole reload: about 2 s for a 135M
model on 2 CPU cores, against a 100 ms target.

This worker extension (``--worker-extension-cls
agentsleep.adapters.vllm_reload.StagedReload``, added by the supervisor to the
servers it starts) splits the reload in two:

- ``agentsleep_stage(weights_path)`` builds a *shadow* of the model: the same
  module tree with its own copies of every parameter and buffer (ties kept),
  sharing everything else (LoRA slots, KV cache, attention backends). It then
  runs vLLM's reload machinery on the shadow, in a background thread, so the
  engine keeps serving the old weights meanwhile. Memory: one more copy of the
  weights until the commit.
- ``agentsleep_staged()`` reports whether staging finished (or failed).
- ``agentsleep_commit()`` is the only part that needs requests held: it points
  every live parameter and buffer at the shadow's processed storage and copies
  the attributes processing replaced (e.g. ``cpu_linear``, which holds the
  repacked oneDNN weights). Pointer swaps, no copies: milliseconds. Tensor
  identities are kept (``param.data = ...``), so anything holding a parameter
  sees the new values.

A failed or abandoned stage touches nothing live (``agentsleep_discard()``
drops it). The supervisor falls back to vLLM's in-place reload when the
extension is missing (an attached server) or staging fails.
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Any

import torch

# Module attributes that belong to torch's bookkeeping, never copied at commit time.
_MODULE_INTERNALS = {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training",
                     "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                     "_load_state_dict_post_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                     "_forward_pre_hooks_with_kwargs", "_is_full_backward_hook",
                     "_original_do_torchao_reload", "_do_torchao_reload"}
_MISSING = object()


def shadow_model(model: torch.nn.Module) -> tuple[torch.nn.Module, list[tuple[torch.nn.Module, torch.nn.Module]]]:
    """A copy of `model`'s module tree with private parameters and buffers; everything else shared.

    Returns the shadow root and the (live, shadow) module pairs. A tensor reached twice (tied
    embeddings) is cloned once, so ties hold in the shadow too."""
    tensors: dict[int, torch.Tensor] = {}
    mods: dict[int, torch.nn.Module] = {}
    pairs: list[tuple[torch.nn.Module, torch.nn.Module]] = []

    def tensor(t: torch.Tensor, param: bool) -> torch.Tensor:
        if id(t) not in tensors:
            data = t.detach().clone()
            if param:
                c = torch.nn.Parameter(data, requires_grad=False)
                c.__class__ = t.__class__          # vLLM parameter subclasses keep their loaders
                c.__dict__.update(t.__dict__)      # weight_loader, output_dim, ...
            else:
                c = data
            tensors[id(t)] = c
        return tensors[id(t)]

    def module(m: torch.nn.Module) -> torch.nn.Module:
        if id(m) in mods:
            return mods[id(m)]
        s = copy.copy(m)  # a new __dict__ holding the same values
        mods[id(m)] = s
        pairs.append((m, s))
        s._parameters = {k: None if v is None else tensor(v, True) for k, v in m._parameters.items()}
        s._buffers = {k: None if v is None else tensor(v, False) for k, v in m._buffers.items()}
        s._non_persistent_buffers_set = set(m._non_persistent_buffers_set)
        s._modules = {k: None if v is None else module(v) for k, v in m._modules.items()}
        return s

    root = module(model)
    return root, pairs


def commit_shadow(pairs: list[tuple[torch.nn.Module, torch.nn.Module]], *, copy_into: bool) -> int:
    """Make the live modules use the shadow's weights. Returns the number of tensors replaced.

    `copy_into=False` points each live tensor at the shadow's storage (no copy: an eager CPU model).
    `copy_into=True` copies into the live storage instead, for captured graphs (CUDA graphs, compiled
    code) that hold storage addresses; on a GPU that is a device-to-device copy."""
    todo: list[tuple[torch.Tensor, torch.Tensor]] = []
    for live, shadow in pairs:  # check everything before touching anything
        for kind in ("_parameters", "_buffers"):
            live_t, shadow_t = getattr(live, kind), getattr(shadow, kind)
            for name, new in shadow_t.items():
                old = live_t.get(name)
                if new is None or old is None or old is new:
                    continue
                if old.dtype != new.dtype or old.device != new.device:
                    raise RuntimeError(f"{type(live).__name__}.{name}: staged {new.dtype}/{new.device}, "
                                       f"served {old.dtype}/{old.device}")
                todo.append((old, new))
    for old, new in todo:
        if copy_into and old.shape == new.shape:
            old.data.copy_(new.data)
        else:
            old.data = new.data
    for live, shadow in pairs:
        for key, value in shadow.__dict__.items():  # what processing replaced (repacked kernels, ...)
            if key in _MODULE_INTERNALS or live.__dict__.get(key, _MISSING) is value:
                continue
            live.__dict__[key] = value
    return len(todo)


class StagedReload:
    """Mixed into vLLM's worker class by ``--worker-extension-cls``; called through ``/collective_rpc``."""

    def agentsleep_stage(self, weights_path: str) -> dict[str, Any]:
        """Start building `weights_path` beside the served weights (returns at once)."""
        st = getattr(self, "_agentsleep_stage", None)
        if st is not None and st["thread"].is_alive():
            return {"started": False, "error": "a stage is already running"}
        state: dict[str, Any] = {"path": weights_path, "done": False, "error": None, "t0": time.perf_counter()}

        def work() -> None:
            from vllm.model_executor.model_loader.reload.inplace import reload_weights
            from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO, get_layerwise_info
            from vllm.model_executor.model_loader.reload.types import LayerReloadingInfo

            model_config = self.vllm_config.model_config
            saved = (model_config.model, model_config.model_weights, model_config.revision)
            try:
                with torch.no_grad():
                    live = self.model_runner.get_model()
                    shadow, pairs = shadow_model(live)
                    for m, s in pairs:  # the shadow reloads from the same checkpoint-format metadata
                        info = get_layerwise_info(m)
                        LAYERWISE_INFO[s] = LayerReloadingInfo(restore_metadata=info.restore_metadata,
                                                               restore_device=info.restore_device)
                    reload_weights(self.vllm_config, shadow, weights_iterator=None, weights_path=weights_path,
                                   is_checkpoint_format=True)
                state.update(pairs=pairs, done=True, stage_s=time.perf_counter() - state["t0"])
            except Exception as e:  # noqa: BLE001 - reported through agentsleep_staged
                model_config.model, model_config.model_weights, model_config.revision = saved
                state.update(error=f"{type(e).__name__}: {e}"[:500], done=True)

        state["thread"] = threading.Thread(target=work, name="agentsleep-stage", daemon=True)
        self._agentsleep_stage = state
        state["thread"].start()
        return {"started": True}

    def agentsleep_staged(self) -> dict[str, Any]:
        st = getattr(self, "_agentsleep_stage", None)
        if st is None:
            return {"done": False, "error": "nothing staged"}
        return {"done": st["done"], "error": st["error"], "path": st["path"],
                "stage_s": round(st.get("stage_s", time.perf_counter() - st["t0"]), 3)}

    def agentsleep_commit(self, weights_path: str) -> dict[str, Any]:
        """Swap the staged weights in. Call with requests held; nothing may be running."""
        st = getattr(self, "_agentsleep_stage", None)
        if st is None or not st["done"] or st["error"] or st.get("discarded") or st.get("path") != weights_path:
            raise RuntimeError(f"no finished stage of {weights_path} to commit")
        from vllm.config import CompilationMode

        t0 = time.perf_counter()
        live = self.model_runner.get_model()
        eager_cpu = (self.vllm_config.compilation_config.mode == CompilationMode.NONE
                     and all(p.device.type == "cpu" for p in live.parameters()))
        with torch.no_grad():
            swapped = commit_shadow(st["pairs"], copy_into=not eager_cpu)
        self._agentsleep_stage = None
        runner = self.model_runner
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):  # as reload_weights does
            if hasattr(runner, reset):
                getattr(runner, reset)()
        return {"swapped": swapped, "copied": not eager_cpu, "commit_ms": round((time.perf_counter() - t0) * 1000, 3)}

    def agentsleep_discard(self) -> dict[str, Any]:
        """Drop a stage. One still running is not waited for (this runs in the engine's loop): its
        thread finishes on its own and is never committed; a new stage is refused until it has
        (the supervisor then reloads in place)."""
        st = getattr(self, "_agentsleep_stage", None)
        if st is not None and st["thread"].is_alive():
            st["discarded"] = True
            return {"discarded": True, "running": True}
        self._agentsleep_stage = None
        return {"discarded": st is not None, "running": False}
