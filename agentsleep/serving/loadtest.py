"""Hot-swap load test: clients send requests without pause while versions are promoted.

    versions = make_swap_versions(registry)                 # adapter, same-shape weights, grown
    report = run_swap_loadtest(server_url, registry, [v.name for v in versions.values()])
    assert report["ok"]                                       # zero failures, one version per answer

Or everything at once (what the benchmark command calls):

    report = swap_benchmark("transformers", work_dir)        # or "vllm"

What is checked: every request succeeds; every answer names one version,
and for each (version, prompt) all answers are identical (greedy decoding:
an answer mixing two versions' weights would differ), optionally equal to a
reference computed in-process; no request that started after a client saw
the new version is answered by an older one. What is measured per swap: the
server's pause (how long new requests were held), the drain part of it, the
work done off the request path, and what clients saw (the slowest request
around the swap against the median before it).
"""
from __future__ import annotations

import shutil
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..models.registry import Registry, Version

DEFAULT_PROMPTS = ["What is the capital of France?", "Name a colour.", "Say hello.", "What is 2 + 2?",
                   "Who wrote Hamlet?", "What day comes after Monday?"]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# -- versions to swap to -------------------------------------------------------------
def _random_lora(model: Any, *, r: int, seed: int, scale: float) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=LORA_TARGETS,
                                          init_lora_weights=False, lora_dropout=0.0))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.mul_(scale)
    return pm


def _save(model: Any, tok: Any, d: Path) -> None:
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))


def grow(model: Any, *, seed: int = 0, noise: float = 0.0) -> Any:
    """One function-preserving block (agentsleep.models.growth), plus optional `noise` on its
    o_proj so the grown version answers differently from its parent."""
    import torch

    from ..models.growth import grow as grow_blocks

    (j,) = grow_blocks(model, 1)
    if noise:
        o = model.model.layers[j].self_attn.o_proj
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            o.weight.add_(torch.randn(o.weight.shape, generator=g) * noise)
    return model


def make_swap_versions(registry: Registry, *, parent: str | None = None, r: int = 8, scale: float = 20.0,
                       grow_noise: float = 0.02, seed: int = 0, progress: Callable[[str], None] | None = None
                       ) -> dict[str, Version]:
    """Commit three versions after `parent` (default CURRENT) without promoting them:

    - "adapter": a sleep-like version with ``adapter/`` (a random LoRA on the parent) and merged weights;
    - "weights": a child of that one with new weights of the same shapes and no adapter (a vLLM
      server must reload its weights in place);
    - "grown": one more decoder layer (a different architecture: blue/green on vLLM).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models.loader import resolve

    say = progress or (lambda m: None)
    base = registry.get(parent) if parent else registry.current()
    src = resolve(base.weights, progress=lambda m: None)
    tok = AutoTokenizer.from_pretrained(src)
    out: dict[str, Version] = {}

    say(f"adapter version on {base.name}")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    pm = _random_lora(model, r=r, seed=seed, scale=scale)
    stage = registry.new_staging()
    pm.save_pretrained(str(stage / "adapter"))
    merged = pm.merge_and_unload()
    _save(merged, tok, stage)
    out["adapter"] = registry.commit(stage, {"parent": base.name, "kind": "sleep", "note": "loadtest: random LoRA"},
                                     make_current=False)

    say(f"same-shape weights version on {out['adapter'].name}")
    pm = _random_lora(merged, r=r, seed=seed + 1, scale=scale)
    stage = registry.new_staging()  # merged weights only (like a full fine-tune): no adapter to hot-load
    merged = pm.merge_and_unload()
    _save(merged, tok, stage)
    out["weights"] = registry.commit(stage, {"parent": out["adapter"].name, "kind": "sleep",
                                             "note": "loadtest: new weights, same shapes"},
                                     make_current=False)

    say(f"grown version on {out['weights'].name}")
    grown = grow(merged, seed=seed, noise=grow_noise)
    stage = registry.new_staging()
    _save(grown, tok, stage)
    out["grown"] = registry.commit(stage, {"parent": out["weights"].name, "kind": "grow",
                                           "note": "loadtest: one more layer"}, make_current=False)
    return out


def reference_answers(versions: list[Version], prompts: list[str], *, max_tokens: int,
                      model_cfg: Any = None) -> dict[str, dict[str, str]]:
    """Greedy answers of each version in-process (the same chat rendering as the server)."""
    from ..config import ModelConfig
    from .engine import Engine, GenParams

    eng = Engine(model_cfg or ModelConfig())
    out: dict[str, dict[str, str]] = {}
    for v in versions:
        eng.swap(v)
        out[v.name] = {}
        for p in prompts:
            prompt = eng.render_chat([{"role": "user", "content": p}])
            out[v.name][p] = eng.generate(prompt, GenParams(max_tokens=max_tokens)).text
    return out


# -- the load test -------------------------------------------------------------------
@dataclass
class _Rec:
    client: int
    prompt: str
    t0: float
    t1: float
    status: int
    version: str | None
    text: str | None
    error: str | None


def run_swap_loadtest(base_url: str, registry: Registry, promote: list[str], *, prompts: list[str] | None = None,
                      clients: int = 2, max_tokens: int = 8, api_key: str | None = None, settle_s: float = 1.0,
                      swap_timeout_s: float = 600, expected: dict[str, dict[str, str]] | None = None,
                      stream_every: int = 0, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Promote each version in `promote` (CURRENT := name) while `clients` threads send chat requests
    to `base_url` continuously; return a report (see the module docstring). `stream_every`=N makes
    every Nth request of a client a streamed one."""
    import httpx

    say = progress or (lambda m: None)
    prompts = prompts or DEFAULT_PROMPTS
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    recs: list[_Rec] = []
    lock = threading.Lock()
    stop = threading.Event()

    def one(c: httpx.Client, i: int, k: int) -> _Rec:
        prompt = prompts[(i + k) % len(prompts)]
        body = {"model": "agentsleep", "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens, "temperature": 0, "use_memory": False}
        t0 = time.time()
        try:
            if stream_every and k % stream_every == stream_every - 1:
                body["stream"] = True
                text, version, status = "", None, 0
                with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    status = r.status_code
                    if status != 200:
                        r.read()
                        return _Rec(i, prompt, t0, time.time(), status, None, None, r.text[:300])
                    import json as _json

                    for line in r.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        obj = _json.loads(line[6:])
                        if "error" in obj:
                            return _Rec(i, prompt, t0, time.time(), 500, version, None, str(obj["error"])[:300])
                        version = obj.get("model", version)
                        for ch in obj.get("choices", []):
                            text += ch.get("delta", {}).get("content") or ""
                return _Rec(i, prompt, t0, time.time(), status, version, text, None)
            r = c.post("/v1/chat/completions", json=body)
            if r.status_code != 200:
                return _Rec(i, prompt, t0, time.time(), r.status_code, None, None, r.text[:300])
            d = r.json()
            return _Rec(i, prompt, t0, time.time(), 200, d.get("model"), d["choices"][0]["message"]["content"], None)
        except Exception as e:  # noqa: BLE001 - every failure counts
            return _Rec(i, prompt, t0, time.time(), 0, None, None, f"{type(e).__name__}: {e}")

    def client(i: int) -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=600) as c:
            k = 0
            while not stop.is_set():
                rec = one(c, i, k)
                with lock:
                    recs.append(rec)
                k += 1

    def health(c: httpx.Client) -> dict[str, Any]:
        try:
            return c.get("/health", timeout=10).json()
        except Exception:  # noqa: BLE001
            return {}

    threads = [threading.Thread(target=client, args=(i,), daemon=True, name=f"loadtest-{i}") for i in range(clients)]
    t_begin = time.time()
    for t in threads:
        t.start()
    swaps: list[dict[str, Any]] = []
    with httpx.Client(base_url=base_url, headers=headers) as hc:
        start_version = health(hc).get("version")
        time.sleep(settle_s)
        for name in promote:
            t_promote = time.time()  # wall clock: compared with the requests' times and the swap report's "at"
            deadline = time.monotonic() + swap_timeout_s
            say(f"promoting {name}")
            registry.set_current(name)
            report: dict[str, Any] | None = None
            t_switched: float | None = None
            while time.monotonic() < deadline:
                h = health(hc)
                rep = next((s for s in reversed(h.get("swaps") or []) if s.get("version") == name
                            and s.get("at", 0) >= t_promote - 1), None)
                if t_switched is None and (h.get("version") == name or (rep and not rep.get("ok", True))):
                    t_switched = time.time()  # new requests go to `name` from here on
                if rep is not None and t_switched is not None:
                    report = rep  # the swap's own report comes once it finished (e.g. the old server drained)
                    break
                time.sleep(0.05)
            t_switched = t_switched or time.time()
            swaps.append({"version": name, "t_promote": t_promote, "t_switched": t_switched,
                          "server": report, "timed_out": report is None})
            say(f"{name}: {report.get('kind') if report else 'TIMED OUT'} "
                f"(pause {report.get('pause_ms') if report else '-'} ms)")
            time.sleep(settle_s)
    stop.set()
    for t in threads:
        t.join(timeout=swap_timeout_s)
    t_end = time.time()
    return _analyse(recs, swaps, expected, start_version, t_end - t_begin)


def _analyse(recs: list[_Rec], swaps: list[dict[str, Any]], expected: dict[str, dict[str, str]] | None,
             start_version: str | None, seconds: float) -> dict[str, Any]:
    failures = [r for r in recs if r.status != 200 or r.error]
    ok = [r for r in recs if r.status == 200 and not r.error]
    answers: dict[tuple[str, str], set[str]] = {}
    for r in ok:
        answers.setdefault((r.version or "?", r.prompt), set()).add(r.text or "")
    inconsistent = [{"version": v, "prompt": p, "answers": sorted(a)[:4]} for (v, p), a in answers.items() if len(a) > 1]
    mismatched = []
    if expected:
        for (v, p), a in answers.items():
            want = expected.get(v, {}).get(p)
            if want is not None and a != {want}:
                mismatched.append({"version": v, "prompt": p, "got": sorted(a)[:2], "expected": want})
    order = [start_version] + [s["version"] for s in swaps]
    rank = {v: i for i, v in enumerate(order) if v}
    # once some client got version N back, no request started later may be answered by an older one
    regressions = 0
    seen: list[tuple[float, int]] = sorted((r.t1, rank.get(r.version or "", -1)) for r in ok)
    best_at: list[tuple[float, int]] = []
    best = -1
    for t, k in seen:
        best = max(best, k)
        best_at.append((t, best))
    import bisect

    times = [t for t, _ in best_at]
    for r in ok:
        i = bisect.bisect_left(times, r.t0) - 1
        if i >= 0 and rank.get(r.version or "", -1) < best_at[i][1]:
            regressions += 1
    lat = sorted((r.t1 - r.t0) * 1000 for r in ok)
    per_swap = []
    prev_end = None
    for s in swaps:
        before = [(r.t1 - r.t0) * 1000 for r in ok if r.t1 < s["t_promote"] and (prev_end is None or r.t0 > prev_end)]
        base_p50 = statistics.median(before) if before else (statistics.median(lat) if lat else 0.0)
        around = [r for r in ok if r.t1 >= s["t_promote"] and r.t0 <= s["t_switched"] + 0.5]
        worst = max(((r.t1 - r.t0) * 1000 for r in around), default=0.0)
        server = s["server"] or {}
        per_swap.append({
            "version": s["version"], "kind": server.get("kind"), "ok": bool(server.get("ok", not s["timed_out"])),
            "server_pause_ms": server.get("pause_ms"), "drain_ms": server.get("drain_ms"),
            "prepare_s": server.get("prepare_s"), "swap_total_s": server.get("total_s"),
            "promote_to_switch_s": round(s["t_switched"] - s["t_promote"], 3),
            "pause_ms": server.get("pause_ms"), "client_max_ms": round(worst, 1),  # short names for tables
            "client_p50_before_ms": round(base_p50, 1), "client_worst_ms": round(worst, 1),
            "client_stall_ms": round(max(worst - base_p50, 0.0), 1), "error": server.get("error"),
            "detail": server.get("detail") or {}})
        prev_end = s["t_switched"]
    by_version: dict[str, int] = {}
    for r in ok:
        by_version[r.version or "?"] = by_version.get(r.version or "?", 0) + 1
    return {
        "ok": not failures and not inconsistent and not regressions and all(p["ok"] for p in per_swap),
        "requests": len(recs), "failed": len(failures), "seconds": round(seconds, 1),
        "throughput_rps": round(len(recs) / seconds, 2) if seconds else None,
        "latency_ms": {"p50": round(lat[len(lat) // 2], 1) if lat else None,
                       "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1) if lat else None,
                       "max": round(lat[-1], 1) if lat else None},
        "answers_by_version": by_version, "inconsistent": inconsistent, "order_regressions": regressions,
        "reference_mismatches": mismatched, "swaps": per_swap,
        "failures": [{"status": r.status, "error": r.error, "at_s": round(r.t0 - (recs[0].t0 if recs else 0), 2)}
                     for r in failures[:10]],
    }


# -- everything at once (the benchmark command) ------------------------------------------
def swap_benchmark(backend: str, work_dir: str | Path, *, base_model: str | None = None, clients: int = 2,
                   max_tokens: int = 8, settle_s: float = 2.0, lora_scale: float | None = None,
                   check_reference: bool = True, stream_every: int = 3, keep: bool = False,
                   vllm_args: list[str] | None = None, progress: Callable[[str], None] | None = None
                   ) -> dict[str, Any]:
    """Build a scratch registry on `base_model` (default: the embedded model), commit an adapter, a
    same-shape and a grown version, serve it with `backend` ("transformers" or "vllm") in this process,
    and run the load test through the three promotions. Returns the load-test report plus setup times."""
    from ..config import ModelConfig
    from ..models.loader import resolve
    from .server import RegistryWatcher, ServerThread, create_app

    say = progress or (lambda m: None)
    work = Path(work_dir)
    root = work / "swap-benchmark"
    shutil.rmtree(root, ignore_errors=True)
    base = resolve(base_model or "embedded", progress=say)
    registry = Registry(root / "registry", base_model=base)
    t0 = time.monotonic()
    # random LoRA strength that visibly changes answers: tiny random models need much more
    scale = lora_scale if lora_scale is not None else (20.0 if _n_params(base) < 5e7 else 0.5)
    versions = make_swap_versions(registry, scale=scale, progress=say)
    setup_s = time.monotonic() - t0
    prompts = DEFAULT_PROMPTS
    expected = None
    if check_reference:
        say("reference answers (in-process)")
        expected = reference_answers([registry.current(), *versions.values()], prompts, max_tokens=max_tokens)
    if backend == "transformers":
        from .transformers_backend import TransformersBackend

        b: Any = TransformersBackend(ModelConfig(max_new_tokens=max_tokens))
    elif backend == "vllm":
        from .vllm import VLLMSupervisor
        from .vllm_backend import VLLMBackend

        sup = VLLMSupervisor(log_dir=root / "logs", max_lora_rank=16, extra_args=vllm_args or [])
        b = VLLMBackend(sup)
    else:
        raise ValueError(f"backend {backend!r}: use transformers or vllm")
    watcher = RegistryWatcher(registry, b, poll_s=0.05)
    try:
        say(f"starting the {backend} backend on {registry.current_name()}")
        t1 = time.monotonic()
        watcher.record(b.start(registry.current()))
        start_s = time.monotonic() - t1
        watcher.start()
        with ServerThread(create_app(b, registry=registry, watcher=watcher)) as srv:
            rep = run_swap_loadtest(srv.url, registry, [v.name for v in versions.values()], prompts=prompts,
                                    clients=clients, max_tokens=max_tokens, settle_s=settle_s, expected=expected,
                                    stream_every=stream_every, progress=say)
    finally:
        watcher.stop()
        b.close()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    kinds = {"adapter": versions["adapter"].name, "weights": versions["weights"].name, "grown": versions["grown"].name}
    rep.update(backend=backend, base_model=base, setup_s=round(setup_s, 1), backend_start_s=round(start_s, 1),
               versions=kinds)
    return rep


def _n_params(model_dir: str) -> float:
    import json

    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return 1e9
    h, i, n, v = (cfg.get(k) or 0 for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    return n * (4 * h * h + 3 * h * i) + v * h
