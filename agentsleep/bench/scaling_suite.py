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

Each row records the peak memory of its seed stage: on a GPU the peak of
torch.cuda.max_memory_allocated (reset when the stage starts, so it holds the
model's weights too), on Linux CPUs the peak resident set (VmHWM, reset the
same way). `--batch-size 8,32` and `--gradient-checkpointing on,off` add a
row per combination (the dream stage runs once per model and episode count).

Runs anywhere torch runs; on a GPU machine without the rest of the stack:
    python -m agentsleep.bench.scaling_suite --device cuda --models qwen2.5-0.5b,qwen2.5-7b --episodes 20,100
    python -m agentsleep.bench.scaling_suite --device cuda --models llama-3.1-8b --episodes 20 \
        --batch-size 8 --gradient-checkpointing on,off --out scaling.json
Several result files render as one table: --from-json a.json,b.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
import traceback
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json

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
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, model_type="llama",
                         rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
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
    kind = shape.pop("model_type")
    extra = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                 max_position_embeddings=4096)
    try:
        cfg = AutoConfig.for_model(kind, **shape, **extra)
    except (TypeError, ValueError) as e:  # a transformers without rope_parameters: the rope base changes no compute
        if "rope_parameters" not in shape:
            raise
        print(f"scaling: {name}: rope_parameters refused ({e}); building with the default rope base")
        shape.pop("rope_parameters")
        cfg = AutoConfig.for_model(kind, **shape, **extra)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, False


def _gib(n_bytes: float) -> float:
    return round(n_bytes / 2**30, 2)


def _reset_peak(cuda: bool) -> bool:
    """Start a new peak-memory window: CUDA's allocator peak, or (CPU, Linux) the process's VmHWM."""
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return True
    try:  # writing 5 to clear_refs resets the peak resident set size (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak(cuda: bool, reset_ok: bool) -> float | None:
    """GiB since the last _reset_peak, or None where it cannot be read."""
    import torch

    if cuda:
        torch.cuda.synchronize()
        return _gib(torch.cuda.max_memory_allocated())
    if not reset_ok:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return _gib(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return None


def measure_dream(model: Any, tok: Any, n: int, cfg: Any) -> dict[str, Any]:
    """Time dream() on n synthetic episodes; its peak memory too."""
    from ..sleep.dream import dream
    from ..sleep.types import Memory

    cuda = next(model.parameters()).is_cuda
    mems = [Memory(f"e{i}", text) for i, (text, _) in enumerate(synthetic_facts(n))]
    ok = _reset_peak(cuda)
    t = time.time()
    ds = dream(model, tok, mems, cfg.dream, seed=0)
    if cuda:
        import torch

        torch.cuda.synchronize()
    dream_s = time.time() - t
    peak = _peak(cuda, ok)
    return {"dream_s": round(dream_s, 1), "dreams_written": ds.written,
            ("dream_gpu_peak_gib" if cuda else "dream_rss_peak_gib"): peak}


def measure_seed(model: Any, tok: Any, n: int, seed_cfg: Any) -> dict[str, Any]:
    """Time seed() on n synthetic episodes (the expert is dropped afterwards); its peak memory too."""
    import torch

    from ..sleep.dream import student_prompt
    from ..sleep.seed import seed
    from ..sleep.types import Dream, Memory

    cuda = next(model.parameters()).is_cuda
    facts = synthetic_facts(n)
    mems = [Memory(f"e{i}", text) for i, (text, _) in enumerate(facts)]
    dreams = [Dream(f"e{i}", q, a) for i, (_, qa) in enumerate(facts) for q, a in qa]
    pool = [(student_prompt(tok, q), "A short, helpful answer.") for q in ("Name a colour.", "What is 2 + 2?")]
    ok = _reset_peak(cuda)
    before = _gib(torch.cuda.memory_allocated()) if cuda else None
    t = time.time()
    pm, stats = seed(model, tok, dreams, mems, seed_cfg, replay_pool=pool)
    if cuda:
        torch.cuda.synchronize()
    seed_s = time.time() - t
    peak = _peak(cuda, ok)
    pm.unload()
    out = {"seed_s": round(seed_s, 1), "seed_steps": stats.steps,
           "seed_tokens_per_s": round(stats.tokens / max(seed_s, 1e-9), 1)}
    if cuda:
        out.update(gpu_peak_gib=peak, gpu_before_seed_gib=before)
    else:
        out.update(gpu_peak_gib=None, rss_peak_gib=peak)
    return out


def _free(cuda: bool) -> None:
    gc.collect()  # peft and transformers modules hold reference cycles: free them before the next model
    if cuda:
        import torch

        torch.cuda.empty_cache()


def run(out_dir: Path | None = None, *, models: tuple[str, ...] = ("embedded",), episodes: tuple[int, ...] = (5, 10),
        device: str = "cpu", say=print, progress=None, tok_path: str | None = None, on_row=None,
        batch_sizes: tuple[int, ...] | None = None, checkpointing: tuple[bool, ...] | None = None,
        keep_going: bool = False) -> dict[str, Any]:
    """A row per model x episode count x batch size x checkpointing (None: the configured value).
    keep_going: a failing row (out of memory, say) is recorded with its error and the run goes on."""
    import platform

    import torch
    from transformers import AutoTokenizer

    from ..config import Config
    from ..models.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(tok_path or str(embedded_model_dir(progress=lambda m: None)))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = Config.load(None).sleep  # the defaults, plus AGENTSLEEP_* overrides (recorded below)
    cuda = device.startswith("cuda")
    gpu = torch.cuda.get_device_name(0) if cuda else None
    variants = [(b, g) for b in (batch_sizes or (cfg.seed.batch_size,))
                for g in (checkpointing if checkpointing is not None else (cfg.seed.gradient_checkpointing,))]
    res: dict[str, Any] = {"device": gpu or f"CPU ({torch.get_num_threads()} threads, {platform.machine()})",
                           "config": {"epochs": cfg.seed.epochs, "min_steps": cfg.seed.min_steps,
                                      "batch_size": cfg.seed.batch_size,
                                      "gradient_checkpointing": cfg.seed.gradient_checkpointing,
                                      "lora_r": cfg.seed.lora_r, "dreams_per_episode": cfg.dream.per_episode},
                           "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "rows": []}

    def record(row: dict[str, Any]) -> None:
        res["rows"].append(row)
        say("scaling: " + json.dumps(row))
        if on_row:  # long GPU runs keep what they measured so far
            on_row(res)

    def failed(base: dict[str, Any], e: BaseException) -> None:
        say("".join(traceback.format_exception(e)).rstrip())
        record({**base, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]})
        _free(cuda)

    for name in models:
        dtype = "bfloat16" if cuda else "float32"
        label = "SmolLM2-135M-Instruct" if name == "embedded" else Path(name).name if name not in SHAPES else name
        try:
            model, real = build_model(name, device, dtype, tok)
        except Exception as e:
            if not keep_going:
                raise
            failed({"model": label, "dtype": dtype, "batch_size": None, "gradient_checkpointing": None}, e)
            continue
        params = sum(p.numel() for p in model.parameters())
        head = {"model": label, "params_m": round(params / 1e6), "weights": "real" if real else "shape only", "dtype": dtype}
        for n in episodes:
            try:
                dream_part = measure_dream(model, tok, n, cfg)
            except Exception as e:
                if not keep_going:
                    raise
                failed({**head, "episodes": n}, e)
                continue
            for b, g in variants:
                base = {**head, "batch_size": b, "gradient_checkpointing": g, "episodes": n}
                try:
                    s = measure_seed(model, tok, n, cfg.seed.model_copy(update={"batch_size": b, "gradient_checkpointing": g}))
                except Exception as e:
                    if not keep_going:
                        raise
                    failed(base, e)
                    continue
                record({**base, **dream_part, **s, "s_per_episode": round((dream_part["dream_s"] + s["seed_s"]) / n, 2)})
        del model
        _free(cuda)
        if cuda:
            say(f"scaling: {torch.cuda.memory_allocated() / 2**30:.2f} GiB still allocated after freeing {label}")
    return res


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several result files (runs on the same kind of machine) as one: rows in order, each row keeping the
    batch size and checkpointing of its own run where the row does not say."""
    if len({r["device"] for r in results}) > 1:
        raise SystemExit("scaling: these results come from different devices: " + ", ".join(r["device"] for r in results))
    out = {**results[0], "rows": []}
    for r in results:
        for row in r["rows"]:
            for key in ("batch_size", "gradient_checkpointing"):
                if key not in row and key in r.get("config", {}):
                    row = {**row, key: r["config"][key]}
            out["rows"].append(row)
    dates = list(dict.fromkeys(r.get("date") for r in results if r.get("date")))
    notes = [r["note"] for r in results if r.get("note")]
    out["date"] = ", ".join(dates)
    if notes:
        out["note"] = "; ".join(notes)
    return out


def _cell(v: Any, fmt=str) -> str:
    return "-" if v is None else fmt(v)


def _row_md(r: dict[str, Any], cfg: dict[str, Any]) -> str:
    batch = r.get("batch_size", cfg.get("batch_size"))
    ckpt = r.get("gradient_checkpointing", cfg.get("gradient_checkpointing"))
    ckpt_s = "-" if ckpt is None else ("on" if ckpt else "off")
    model = f"{r['model']} ({r['params_m']}M, {r['weights']})" if "params_m" in r else r["model"]
    if r.get("error"):
        return f"| {model} | {_cell(batch)} | {ckpt_s} | {r.get('episodes', '-')} | failed: {r['error']} | | | | | |"
    peak = r.get("gpu_peak_gib")
    peak_s = _cell(peak) if peak is not None or "rss_peak_gib" not in r else _cell(r["rss_peak_gib"], lambda v: f"RSS {v}")
    return (f"| {model} | {_cell(batch)} | {ckpt_s} | {r['episodes']} | {r['dream_s']} | {r['seed_s']} "
            f"| {r['seed_tokens_per_s']} | {r['s_per_episode']} | {peak_s} "
            f"| {round(8 * 3600 / max(r['s_per_episode'], 1e-9))} |")


def markdown(res: dict[str, Any], docs_dir: Path | None = None) -> str:
    c = res["config"]
    rows = "\n".join(_row_md(r, c) for r in res["rows"])
    return (f"On {res['device']}; seeding {c['epochs']} epochs, LoRA rank {c['lora_r']}; "
            f"{c['dreams_per_episode']} dreams written per episode; batch size and gradient checkpointing per row. "
            f"Peak GPU GiB: torch.cuda.max_memory_allocated during the seed stage, weights included (CPU rows: peak "
            f"resident set, RSS, or -). Episodes per night = 8 h / (dream + seed seconds per "
            f"episode): an estimate from the measured rows (gate and publish excluded)."
            f"{' ' + res['note'][:1].upper() + res['note'][1:] + '.' if res.get('note') else ''}\n\n"
            "| model | batch | checkpointing | episodes | dream s | seed s | seed tokens/s | s per episode "
            "| peak GPU GiB | episodes per 8 h night |\n"
            f"|---|---|---|---|---|---|---|---|---|---|\n{rows}\n")


def _switch(v: str) -> tuple[bool, ...]:
    vals = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}
    try:
        return tuple(vals[x.strip().lower()] for x in v.split(","))
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected on, off or on,off; got {v!r}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="embedded")
    ap.add_argument("--episodes", default="5,10")
    ap.add_argument("--batch-size", default=None, help="seed.batch_size, or several: 8,32 (default: the configured one)")
    ap.add_argument("--gradient-checkpointing", nargs="?", const=(True,), default=None, type=_switch,
                    metavar="on|off|on,off", help="seed.gradient_checkpointing (alone: on; on,off: a row each)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the embedded SmolLM2's)")
    ap.add_argument("--out", default=None, help="write the JSON results here (after every row, too)")
    ap.add_argument("--from-json", default=None,
                    help="do not measure: render results written by --out (another machine); a,b,... merges several")
    ap.add_argument("--docs", default=None, help="also write the table into this BENCHMARKS.md, as its own block")
    a = ap.parse_args()
    if a.from_json:
        res = merge([json.loads(Path(f).read_text()) for f in a.from_json.split(",")])
    else:
        res = run(models=tuple(a.models.split(",")), episodes=tuple(int(x) for x in a.episodes.split(",")),
                  device=a.device, tok_path=a.tokenizer, keep_going=True,
                  batch_sizes=tuple(int(x) for x in a.batch_size.split(",")) if a.batch_size else None,
                  checkpointing=a.gradient_checkpointing,
                  on_row=(lambda r: atomic_write_json(Path(a.out), r)) if a.out else None)
    if a.out:
        atomic_write_json(Path(a.out), res)
    if a.docs:
        from . import report

        kind = "gpu" if "CPU" not in res["device"] else "cpu"
        report.update_doc(Path(a.docs), f"scaling-{kind}", markdown(res),
                          f"## Sleep cost vs episodes and model size ({res['device']})\n\n"
                          f"_{res['device']}; {res.get('date') or time.strftime('%Y-%m-%d')}; measured with "
                          f"`python -m agentsleep.bench.scaling_suite`_")
    print(markdown(res))


if __name__ == "__main__":
    main()
