"""Move a home's episodes between embedded Chroma and a Chroma server, losing nothing.

Records are copied with their stored embeddings (no re-embedding, so recall
ranks exactly as before), ids and metadata unchanged; the consolidation
ledger is keyed by episode id and stays where it is. The copy is verified
(every source id present in the target with the same content hash) before
the home's config.toml is switched, atomically. The lexical index (SQLite,
beside the ledger) is rebuilt from the copied records so it matches the new
store exactly. The source is left intact: delete it yourself once you trust
the target.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from ..atomic import atomic_write_text
from ..config import MemoryConfig
from ..errors import InputError, StoreUnavailableError
from .store import EpisodeStore

BATCH = 256


def _records(store: EpisodeStore) -> dict[str, Any]:
    return store._call("read all", store._coll.get, include=["documents", "metadatas", "embeddings"])


def migrate(home, target: MemoryConfig, progress=None, *, persist_token: bool = True) -> dict[str, Any]:
    """Copy every episode to `target`, verify it, then point the home's config.toml at it. With
    `persist_token` False the target's token (taken from the environment) is not written to the file."""
    src_cfg = home.config.memory
    same = (target.backend == src_cfg.backend and target.collection == src_cfg.collection and
            (target.backend == "embedded" or (target.host, target.port) == (src_cfg.host, src_cfg.port)))
    if same:
        raise InputError(f"migrate: the home already uses this store ({target.backend}, collection {target.collection})")
    src = home.store
    raw = _records(src)
    ids = list(raw["ids"])
    home.close()  # an embedded target takes the writer lock of <home>/memory
    # sync=False: the lexical index still describes the source until the copy is verified
    dst = EpisodeStore(target, home.root / "memory", writable=True, sync=False, claim=False)
    try:
        have = dst._call("read ids", dst._coll.get, ids=ids or None, include=["metadatas"]) if ids else {"ids": [], "metadatas": []}
        existing = dict(zip(have["ids"], have["metadatas"]))
        other = dst.count() - len(existing)
        if other:
            raise InputError(f"migrate: the target collection '{target.collection}' already holds {other} other episodes; "
                             "choose an empty collection (memory.collection)")
        todo = [i for i, rid in enumerate(ids) if rid not in existing]
        for n in range(0, len(todo), BATCH):
            part = todo[n:n + BATCH]
            dst._call("copy", dst._coll.add, ids=[ids[i] for i in part], documents=[raw["documents"][i] for i in part],
                      metadatas=[raw["metadatas"][i] for i in part], embeddings=[raw["embeddings"][i] for i in part])
            if progress:
                progress("migrate", min(n + BATCH, len(todo)), len(todo), "chunks copied")
        check = dst._call("verify", dst._coll.get, ids=ids or None, include=["metadatas"]) if ids else {"ids": [], "metadatas": []}
        got = {i: m.get("content_hash") for i, m in zip(check["ids"], check["metadatas"])}
        bad = [rid for rid, md in zip(ids, raw["metadatas"]) if got.get(rid) != md.get("content_hash")]
        if bad:
            raise StoreUnavailableError(f"migrate: {len(bad)} stored chunks did not arrive intact (e.g. {bad[0]}); "
                                        "the home still uses its old store")
        lex = dst.sync_lexical(force=True)
        if lex["indexed"] != len(ids):
            raise StoreUnavailableError(f"migrate: the lexical index holds {lex['indexed']} of {len(ids)} stored chunks; "
                                        "the home still uses its old store")
        if target.backend == "server":
            dst.claim()
    finally:
        dst.close()
    _switch_config(home.root / "config.toml", target, persist_token)
    memories = {(md or {}).get("parent_id") or rid for rid, md in zip(ids, raw["metadatas"])}
    # episodes, copied, already_there: stored rows (a long text is several chunks); memories: what a person counts
    out = {"memories": len(memories), "episodes": len(ids), "copied": len(todo), "already_there": len(existing),
           "lexical_indexed": lex["indexed"],
           "from": _describe(src_cfg), "to": _describe(target)}
    if target.token and not persist_token:
        out["token"] = ("not written to config.toml (it came from the environment): set AGENTSLEEP_MEMORY__TOKEN "
                        "for the commands that use this store")
    return out


def _describe(c: MemoryConfig) -> str:
    return f"embedded:{c.collection}" if c.backend == "embedded" else f"server {c.host}:{c.port}:{c.collection}"


def _switch_config(path: Path, target: MemoryConfig, persist_token: bool = True) -> None:
    data = tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    mem = data.setdefault("memory", {})
    for k in ("backend", "host", "port", "collection", "ssl"):
        mem[k] = getattr(target, k)
    if not persist_token:  # a secret from the environment is not copied into a file; the old store's is stale
        mem.pop("token", None)
    elif target.token:
        mem["token"] = target.token
    else:
        mem.pop("token", None)
    atomic_write_text(path, "# agentsleep home configuration (rewritten by `agentsleep migrate`)\n\n" + tomli_w.dumps(data))
