"""How a sleep's cost grows with the number of episodes and with model size.

For each model and each episode count N, two stages are timed with the real
stage code:
- dream: `dream()` writes, filters and ranks dreams for N synthetic facts
  (generation dominates it);
- seed: `seed()` trains a fresh expert on N episodes with the workload a real
  sleep keeps (5 dream Q/A pairs per episode plus the episode text, the
  configured epochs and batch size, the replay KL term).
Gate and publish are left out (probe answering and a merge: small next to these).

Models: the embedded SmolLM2-135M with its real weights, and, on a GPU,
random-initialised models with the shapes of larger ones (compute depends on
shape, not on the values; those rows say "shape only"). The capacity guide
in the docs derives episodes per night from these rows.

Runs anywhere torch runs; on a GPU machine without the rest of the stack:
    python -m agentsleep.bench.scaling_suite --device cuda --models qwen2.5-0.5b,qwen2.5-7b --episodes 20,100
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

# Published shapes (config.json of each model); random weights of these shapes time the same as real ones.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, model_type="llama"),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, model_type="qwen2"),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, model_type="qwen2"),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, model_type="qwen2"),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, model_type="llama"),
}

_NAMES = ["Maya", "Tomas", "Ingrid", "Okafor", "Priya", "Lukas", "Amara", "Kenji", "Sofia", "Rafael", "Elif", "Noor"]
_THINGS = [("favourite tea", "jasmine green tea"), ("dentist", "Dr. Alvarez"), ("car", "a blue Subaru Outback"),
           ("home town", "Porto"), ("wifi network", "OrangeFox"), ("instrument", "the cello"),
           ("favourite author", "Ursula Le Guin"), ("gym", "Ironworks Fitness"), ("project language", "Rust"),
           ("birthday", "the 9th of September")]


def synthetic_facts(n: int) -> list[tuple[str, list[tuple[str, str]]]]:
    """n distinct agent facts, each with 5 question/answer pairs about it (the dreams a sleep keeps)."""
    out = []
    for i in range(n):
        name, (thing, value) = _NAMES[i % len(_NAMES)], _THINGS[(i // len(_NAMES)) % len(_THINGS)]
        tag = f" (note {i})" if i >= len(_NAMES) * len(_THINGS) else ""
        text = f"{name}'s {thing} is {value}{tag}."
        qa = [(f"What is {name}'s {thing}?", value), (f"Whose {thing} is {value}?", name),
              (f"Tell me {name}'s {thing}.", f"It is {value}."), (f"Do you know {name}'s {thing}?", f"Yes: {value}."),
              (f"Which {thing} does {name} have?", value)]
        out.append((text, qa))
    return out


def build_model(name: str, device: str, dtype: str, tok: Any) -> tuple[Any, bool]:
    """(model, real_weights). A SHAPES name builds random weights on the device; anything else
    ('embedded', a model directory) is loaded with its weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if name not in SHAPES:
        from ..models.loader import load
        return load(name, dtype=dtype, device=device)[0], True
    shape = dict(SHAPES[name])
    cfg = AutoConfig.for_model(shape.pop("model_type"), **shape, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, False


def measure(model: Any, tok: Any, n: int, cfg: Any) -> dict[str, Any]:
    """Time dream() and seed() on n synthetic episodes with the model (the expert is dropped afterwards)."""
    import torch

    from ..sleep.dream import dream, student_prompt
    from ..sleep.seed import seed
    from ..sleep.types import Dream, Memory

    facts = synthetic_facts(n)
    mems = [Memory(f"e{i}", text) for i, (text, _) in enumerate(facts)]
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    t = time.time()
    ds = dream(model, tok, mems, cfg.dream, seed=0)
    sync()
    dream_s = time.time() - t
    dreams = [Dream(f"e{i}", q, a) for i, (_, qa) in enumerate(facts) for q, a in qa]
    pool = [(student_prompt(tok, q), "A short, helpful answer.") for q in ("Name a colour.", "What is 2 + 2?")]
    if next(model.parameters()).is_cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    pm, stats = seed(model, tok, dreams, mems, cfg.seed, replay_pool=pool)
    sync()
    seed_s = time.time() - t
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if next(model.parameters()).is_cuda else None
    pm.unload()
    return {"episodes": n, "dream_s": round(dream_s, 1), "dreams_written": ds.written, "seed_s": round(seed_s, 1),
            "seed_steps": stats.steps, "seed_tokens_per_s": round(stats.tokens / max(seed_s, 1e-9), 1),
            "s_per_episode": round((dream_s + seed_s) / n, 2), "gpu_peak_gib": peak}


def run(out_dir: Path | None = None, *, models: tuple[str, ...] = ("embedded",), episodes: tuple[int, ...] = (5, 10),
        device: str = "cpu", say=print, progress=None, tok_path: str | None = None, on_row=None) -> dict[str, Any]:
    import platform

    import torch
    from transformers import AutoTokenizer

    from ..config import Config
    from ..models.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(tok_path or str(embedded_model_dir(progress=lambda m: None)))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = Config().sleep
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    res: dict[str, Any] = {"device": gpu or f"CPU ({torch.get_num_threads()} threads, {platform.machine()})",
                           "config": {"epochs": cfg.seed.epochs, "batch_size": cfg.seed.batch_size,
                                      "lora_r": cfg.seed.lora_r, "dreams_per_episode": cfg.dream.per_episode},
                           "date": time.strftime("%Y-%m-%d"), "rows": []}
    for name in models:
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
        model, real = build_model(name, device, dtype, tok)
        params = sum(p.numel() for p in model.parameters())
        for n in episodes:
            label = "SmolLM2-135M-Instruct" if name == "embedded" else Path(name).name if name not in SHAPES else name
            row = {"model": label, "params_m": round(params / 1e6),
                   "weights": "real" if real else "shape only", "dtype": dtype, **measure(model, tok, n, cfg)}
            res["rows"].append(row)
            say("scaling: " + json.dumps(row))
            if on_row:  # long GPU runs keep what they measured so far
                on_row(res)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return res


def markdown(res: dict[str, Any], docs_dir: Path | None = None) -> str:
    rows = "\n".join(f"| {r['model']} ({r['params_m']}M, {r['weights']}) | {r['episodes']} | {r['dream_s']} | {r['seed_s']} "
                     f"| {r['seed_tokens_per_s']} | {r['s_per_episode']} | {round(8 * 3600 / max(r['s_per_episode'], 1e-9))} |"
                     for r in res["rows"])
    c = res["config"]
    return (f"On {res['device']}; seeding {c['epochs']} epochs, batch {c['batch_size']}, LoRA rank {c['lora_r']}; "
            f"{c['dreams_per_episode']} dreams written per episode. Episodes per night = 8 h / (dream + seed seconds per "
            f"episode): an estimate from the measured rows (gate and publish excluded)."
            f"{' ' + res['note'][:1].upper() + res['note'][1:] + '.' if res.get('note') else ''}\n\n"
            "| model | episodes | dream s | seed s | seed tokens/s | s per episode | episodes per 8 h night |\n"
            f"|---|---|---|---|---|---|---|\n{rows}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="embedded")
    ap.add_argument("--episodes", default="5,10")
    ap.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the embedded SmolLM2's)")
    ap.add_argument("--out", default=None, help="write the JSON results here")
    ap.add_argument("--from-json", default=None, help="do not measure: render results written by --out (another machine)")
    ap.add_argument("--docs", default=None, help="also write the table into this BENCHMARKS.md, as its own block")
    a = ap.parse_args()
    if a.from_json:
        res = json.loads(Path(a.from_json).read_text())
    else:
        res = run(models=tuple(a.models.split(",")), episodes=tuple(int(x) for x in a.episodes.split(",")),
                  device=a.device, tok_path=a.tokenizer,
                  on_row=(lambda r: Path(a.out).write_text(json.dumps(r, indent=1))) if a.out else None)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    if a.docs:
        from . import report

        kind = "gpu" if "CPU" not in res["device"] else "cpu"
        report.update_doc(Path(a.docs), f"scaling-{kind}", markdown(res),
                          f"## Sleep cost vs episodes and model size ({res['device']})\n\n"
                          f"_{res['device']}; {res.get('date', time.strftime('%Y-%m-%d'))}; measured with "
                          f"`python -m agentsleep.bench.scaling_suite`_")
    print(markdown(res))


if __name__ == "__main__":
    main()
