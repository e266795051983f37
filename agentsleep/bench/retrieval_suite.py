"""Retrieval latency: `recall` p50/p99 at 1k, 10k and 100k episodes, embedded and server Chroma.

What is timed is the real awake path: `EpisodeStore.recall` (query embedding
with MiniLM, the Chroma HNSW query with its namespace filter, the SQLite FTS5
BM25 query, reciprocal-rank fusion, the ledger join), one query at a time,
k = memory.recall_k. To reach 100k episodes in minutes on two
cores the store is filled in bulk: the texts are LoCoMo turns (numbered, so
all distinct) and their embeddings are the MiniLM embeddings of up to
`unique` real turns plus small Gaussian noise, renormalised; the same rows go
into the lexical index. Filling is not `remember` and its time is reported
separately as bulk insert time.
"""
from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

SIZES = (1_000, 10_000, 100_000)


def _texts(n: int) -> list[str]:
    from .locomo_suite import find_data, turns

    src = find_data()
    if src is not None:
        out = [t for conv in json.loads(src.read_text()).values() for _, _, t in turns(conv)]
        if out:
            return out[:n]
    rng = random.Random(0)  # no dataset: synthetic agent facts
    who, what = ["Ana", "Bo", "Chen", "Dev", "Eli"], ["likes tea", "moved to Lyon", "plays cello", "owns a cat", "uses Rust"]
    return [f"{rng.choice(who)} {rng.choice(what)} (note {i})." for i in range(n)]


def _fill(store, texts: list[str], base, start: int, stop: int, say) -> float:
    """Add episodes start..stop-1 straight into the collection with their embeddings."""
    import numpy as np

    from ..memory.episode import Episode, content_hash, utcnow
    from ..memory.store import _row

    rng = np.random.default_rng(start)
    t = time.time()
    now = utcnow()
    for s in range(start, stop, 2000):
        idx = range(s, min(stop, s + 2000))
        emb = base[[i % len(base) for i in idx]] + rng.normal(0, 0.02, (len(idx), base.shape[1])).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        docs = [f"{texts[i % len(texts)]} (#{i})" for i in idx]
        eps = [Episode(id=f"ep-lat{i:08d}", text=d, kind="turn", source="bench", created_at=now,
                       content_hash=content_hash(d)) for i, d in zip(idx, docs)]
        store._coll.add(ids=[e.id for e in eps], documents=docs, metadatas=[e.to_metadata() for e in eps],
                        embeddings=emb.tolist())
        store.lexical.add([_row(e.id, e.text, e.to_metadata()) for e in eps])
        say(f"retrieval: {store.cfg.backend} filled to {idx[-1] + 1:,}")
    return time.time() - t


def _latency(store, queries: list[str], k: int) -> dict[str, float]:
    import numpy as np

    store.recall(queries[0], k)  # warm: model load, first HNSW touch
    ms = []
    for q in queries:
        t = time.perf_counter()
        store.recall(q, k)
        ms.append((time.perf_counter() - t) * 1000)
    a = np.array(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "mean_ms": round(float(a.mean()), 2)}


def run(out_dir: Path, *, sizes=SIZES, backends=("embedded", "server"), queries: int = 200, unique: int = 3000,
        say=print, progress=None) -> dict[str, Any]:
    """Latency per (backend, size); `sizes` and `backends` may be narrowed (e.g. sizes=(10_000,))."""
    from ..config import MemoryConfig
    from ..memory.embedder import MiniLMEmbedding
    from ..memory.store import EpisodeStore

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    texts = _texts(max(unique, queries))
    import numpy as np

    base = np.array(MiniLMEmbedding()(texts[:unique]), dtype=np.float32)
    rng = random.Random(1)
    qs = [f"What did they say about {' '.join(t.split()[-4:])}" for t in rng.sample(texts, queries)]
    rows = []
    for backend in backends:
        proc = None
        cfg = MemoryConfig(backend=backend, collection="latency")
        if backend == "server":
            from ..memory.chroma_server import start, stop

            proc, host, port = start(out_dir / "server-data", out_dir / "chroma.log")
            cfg = cfg.model_copy(update={"host": host, "port": port})
        store = None
        try:
            store = EpisodeStore(cfg, root=out_dir / backend)
            have = 0
            for size in sorted(sizes):
                insert_s = _fill(store, texts, base, have, size, say)
                have = size
                lat = _latency(store, qs, cfg.recall_k)
                rows.append({"backend": backend, "episodes": size, "k": cfg.recall_k, "queries": queries,
                             "bulk_insert_s": round(insert_s, 1), **lat})
                say(f"retrieval: {backend} {size:,} episodes: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms")
        finally:
            if store is not None:
                store.close()
            if proc is not None:
                stop(proc)
    return {"rows": rows, "unique_embeddings": len(base)}


def markdown(res: dict[str, Any], docs_dir: Path | None = None) -> str:
    lines = ["`EpisodeStore.recall` one query at a time (MiniLM query embedding + Chroma HNSW with the namespace "
             "filter + SQLite FTS5 BM25 + reciprocal-rank fusion + ledger join; both indexes filled); "
             f"{res['rows'][0]['queries'] if res['rows'] else 0} queries per point, after one warm-up query. "
             "Bulk insert fills the store directly (not `remember`).", "",
             "| backend | episodes | k | p50 ms | p99 ms | mean ms | bulk insert s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['backend']} | {r['episodes']:,} | {r['k']} | {r['p50_ms']} | {r['p99_ms']} | {r['mean_ms']} | "
                     f"{r['bulk_insert_s']} |")
    if docs_dir is not None and res["rows"]:
        lines += ["", f"![retrieval latency]({plot(res, docs_dir / 'bench_retrieval.png').name})"]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for backend in sorted({r["backend"] for r in res["rows"]}):
        rs = [r for r in res["rows"] if r["backend"] == backend]
        ax.plot([r["episodes"] for r in rs], [r["p50_ms"] for r in rs], "o-", label=f"{backend} p50")
        ax.plot([r["episodes"] for r in rs], [r["p99_ms"] for r in rs], "s--", label=f"{backend} p99")
    ax.set_xscale("log")
    ax.set_xlabel("episodes in the store")
    ax.set_ylabel("recall latency (ms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
