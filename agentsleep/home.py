"""Home: one agent's directory, and the Python entry point most users touch.

    home = Home.open("~/.agentsleep/alice")
    home.remember("Alice's daughter is called Maya.")
    home.ask("What is my daughter's name?")          # retrieval (awake)
    home.sleep()                                      # consolidate into the weights
    home.ask("What is my daughter's name?", use_memory=False)   # closed-book

Layout: ``config.toml``, ``memory/`` (Chroma + ledger), ``registry/`` (model
versions, CURRENT), ``sleeps/`` (one journal + report per sleep), ``logs/``.
The CLI, the daemon and the adapters are thin layers over this class.
"""
from __future__ import annotations

import json
import logging
import os
import stat
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w

from .config import Config
from .errors import AgentsleepError, HomeError, InputError, SleepLockedError, StoreUnavailableError
from .memory.episode import Episode, RememberResult
from .memory.store import EpisodeStore
from .models.registry import Registry, Version

log = logging.getLogger(__name__)

DEFAULT_HOME = Path("~/.agentsleep/default")


def default_home() -> Path:
    return Path(os.environ.get("AGENTSLEEP_HOME") or DEFAULT_HOME).expanduser()


# What says a folder is a home: files only agentsleep writes (a folder merely named memory/ is not enough)
HOME_MARKS = ("config.toml", "memory/ledger.sqlite", "registry/CURRENT", "registry/versions")
# Everything agentsleep keeps directly in a home (the LangGraph store's items too); `purge` deletes these
# and nothing else, the marks last, so that a purge cut short can be run again
HOME_ENTRIES = ("sleeps", "logs", "daemon", "langgraph", "serve.json", "registry", "memory", "config.toml",
                "sleep.lock", "sleep.json")


def check_home_folder(root: Path) -> None:
    """Refuse a folder that holds other things and none of a home's own (a mistyped or empty --home that
    resolved to the current folder, ~/Documents): opening it would write a home into it. A folder holding
    nothing but a home's entries (one whose creation or purge was cut short) is a home."""
    if not root.is_dir() or any((root / m).exists() for m in HOME_MARKS):
        return
    others = [c for c in root.iterdir() if c.name not in HOME_ENTRIES]
    if others:
        raise HomeError(f"{root} holds other files and is not an agentsleep home (no config.toml, "
                        "memory/ledger.sqlite or registry/); pass the home's folder, or a new or empty one for a new home")


# forget --query deletes only memories that share a content word with the query or are this similar to it
# (cosine): recall always returns its nearest episodes, and "forget qqzzx" must not delete whatever is nearest
FORGET_MIN_SIMILARITY = 0.5


def _matches_query(ep: Any, query: str) -> bool:
    from .textmatch import content_tokens

    return bool(set(content_tokens(query)) & set(content_tokens(ep.text))) or (ep.score or 0.0) >= FORGET_MIN_SIMILARITY


def _mkdir_private(p: Path) -> None:
    try:
        p.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        raise HomeError(f"home {p}: exists and is not a directory; pass another --home") from None
    except NotADirectoryError:
        raise HomeError(f"home {p}: a parent path is a file, not a directory; pass another --home") from None
    except OSError as e:
        raise HomeError(f"home {p}: cannot create ({e.strerror}); check permissions or pass another --home") from None


class Home:
    """An agent home. Cheap to open: the store and the model load on first use."""

    def __init__(self, root: Path, config: Config, *, writable: bool = True, writer_wait: float = 0.0):
        self.root = root
        self.config = config
        self.writable = writable
        self.writer_wait = writer_wait  # seconds a write waits for another process's writer lock
        self._store: EpisodeStore | None = None
        self._registry: Registry | None = None
        self._engine = None
        self._lock = threading.RLock()

    # -- opening ----------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path | None = None, *, writable: bool = True, create: bool = True,
             env: dict[str, str] | None = None, writer_wait: float = 0.0) -> "Home":
        """Open (creating with defaults if needed) the home at `path`, $AGENTSLEEP_HOME or the default.
        `writer_wait`: seconds the store waits for another process that holds its writer lock (a
        one-shot command beside another), instead of refusing at once."""
        root = Path(path).expanduser() if path else default_home()
        if root.exists() and not root.is_dir():
            raise HomeError(f"home {root}: is a file, not a directory; pass another --home")
        if not root.exists() or not any(root.iterdir()):
            if not create:
                raise HomeError(f"home {root} {'is empty' if root.exists() else 'does not exist'}; "
                                f"run `agentsleep init --home {root}`")
            cls.init(root)
        check_home_folder(root)
        cfg = Config.load(root / "config.toml", env=env)
        return cls(root, cfg, writable=writable, writer_wait=writer_wait)

    @classmethod
    def init(cls, path: str | Path | None = None, *, config: Config | None = None) -> Path:
        """Create the home's folders and a config.toml holding only what differs from the defaults.

        Defaults are not written out: a default improved in a later release then reaches
        this home too, unless the home set that field itself. `agentsleep config` prints
        the settings in effect."""
        root = Path(path).expanduser() if path else default_home()
        if root.is_dir():
            check_home_folder(root)
        _mkdir_private(root)
        for sub in ("memory", "registry", "sleeps", "logs"):
            _mkdir_private(root / sub)
        cfg_path = root / "config.toml"
        if not cfg_path.exists():
            body = ("# agentsleep home configuration: only what this home sets; everything else keeps its\n"
                    "# default (`agentsleep config` prints every setting in effect, agentsleep/config.py\n"
                    "# says what each one does). For example:\n"
                    "#   [sleep.seed]\n"
                    "#   lr = 5e-4\n"
                    "# Environment overrides: AGENTSLEEP_<SECTION>__<FIELD>=value\n\n")
            body += tomli_w.dumps((config or Config()).to_toml_dict(only_set=True))
            tmp = cfg_path.with_suffix(".tmp")
            try:
                tmp.write_text(body, encoding="utf-8")
                os.replace(tmp, cfg_path)
            except OSError as e:
                raise HomeError(f"home {root}: cannot write config.toml ({e.strerror}); is it read-only?") from None
        _probe_writable(root)
        return root

    # -- parts --------------------------------------------------------------
    @property
    def store(self) -> EpisodeStore:
        with self._lock:
            if self._store is None:
                self._store = EpisodeStore(self.config.memory, self.root / "memory", writable=self.writable,
                                           writer_wait=self.writer_wait)
                if self.writable:
                    self._finish_forgets(self._store)
            return self._store

    def _finish_forgets(self, store: EpisodeStore) -> None:
        """A forget cut short (a crash or a store error after its record): the store has deleted what it
        still held (EpisodeStore.finish_forgets); what remains is what `forget` does after the record."""
        from .sleep.lock import sleep_lock

        pending = store.ledger.pending_forgets()
        if not pending:
            return
        try:
            with sleep_lock(self.root, what="forget"):
                wished = store.ledger.pending_fallbacks()  # each forget finished as it was asked
                for ids, fallback in (([i for i in pending if i not in wished], False),
                                      ([i for i in pending if i in wished], True)):
                    if ids:
                        self._after_forget_record(ids, fallback=fallback)
                store.ledger.forget_done(pending)
        except SleepLockedError:
            pass  # a sleep runs (it never takes a forgotten episode): the next open finishes this
        except (OSError, AgentsleepError) as e:  # e.g. a full disk: the episodes are gone from the stores;
            log.warning("could not finish forgetting %d episode(s) yet (%s); the next open tries again",
                        len(pending), e)  # the rest (plan, records, versions) must not block every open

    def _after_forget_record(self, removed: list[str], *, fallback: bool = False) -> tuple[set[str], list[str]]:
        """What `forget` does once the forgetting is recorded, before the deletes: the update records naming
        them go (an episode superseded only by a forgotten one is current again), the learned dream writer
        goes, the rebuild is planned, the sleeps' records lose their dreams and probe answers, and the
        versions holding them are deleted, but for the serving lineage, which the rebuild replaces first.
        Returns the versions holding them, and those deleted."""
        from .memory import supersede
        from .sleep.journal import scrub
        from .sleep.writer import forget_writer

        supersede.drop(self.store.ledger.path, removed)
        forget_writer(self.root)
        before = self.registry.current_name()
        holders = self._plan_rebuild(removed, fallback=fallback)
        scrub(self.root, set(removed))
        return holders, self.erase_forgotten(keep={before})

    def _clean_rebuild_start(self, dirty: set[str] | None = None) -> dict | None:
        """The pending rebuild plan, its start moved back where it must not be: on a version whose weights hold a
        forgotten episode (after a rollback, a later forget can find the start off the serving lineage and
        holding it), or on one no longer on disk. The new start is the last clean version of that history (of
        the serving one when the start is gone); the base holds nothing. Saved when changed. `dirty`: the
        versions holding forgotten episodes (`Registry.holding`), when the caller has read them already."""
        from .sleep.select import load_rebuild, save_rebuild

        plan = load_rebuild(self.root)
        if not plan:
            return None
        if dirty is None:
            dirty = set(self.registry.holding(set(self.store.ledger.forgotten())))
        present = set(self.registry.names())
        if plan["from"] in present and plan["from"] not in dirty:
            return plan
        chain = [v.name for v in self.registry.lineage(plan["from"] if plan["from"] in present else None)]
        clean = next(n for n in reversed(chain) if n not in dirty)
        plan = {**plan, "from": clean, "versions": sorted(set(plan["versions"]) | set(chain[chain.index(clean) + 1:]))}
        save_rebuild(self.root, plan)
        return plan

    def erase_forgotten(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Delete the versions whose weights hold a forgotten episode, but for the serving lineage and `keep`
        (the version served until a moment ago: another process serving it swaps away first; the next
        sleep deletes it). Run by `forget`, after a rebuild publishes, and as each sleep starts (so that a
        delete cut short is finished). Returns the names deleted."""
        forgotten = set(self.store.ledger.forgotten())
        held = self.registry.holding(forgotten) if forgotten else []  # every manifest read once, for both
        plan = self._clean_rebuild_start(set(held))
        keep = set(keep) | ({plan["from"]} if plan else set())  # the rebuild starts there: never delete it
        gone = self.registry.erase_holding(forgotten, keep=keep, held=held)
        if gone:
            self.store.ledger.unmark_versions(gone)
        return gone

    @property
    def registry(self) -> Registry:
        with self._lock:
            if self._registry is None:
                self._registry = Registry(self.root / "registry", base_model=self.config.model.base,
                                          snapshot_every=self.config.sleep.snapshot_every)
            return self._registry

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> "Home":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- awake: memory ------------------------------------------------------
    def remember(self, text: str, **kw: Any) -> RememberResult:
        return self.store.remember(text, **kw)

    def remember_many(self, items: list[dict[str, Any]]) -> list[RememberResult]:
        """Many memories at once (each a dict of remember's arguments): one embedding batch."""
        return self.store.remember_many(items)

    def recall(self, query: str, k: int | None = None, **filters: Any) -> list[Episode]:
        return self.store.recall(query, k, **filters)

    def get(self, episode_id: str) -> Episode:
        return self.store.get(episode_id)

    def episodes(self, **kw: Any) -> list[Episode]:
        return self.store.list(**kw)

    def export(self) -> dict[str, Any]:
        """Everything this home knows, as plain data: every episode (with provenance and the version
        that consolidated it) and every model version's manifest. For audits and data-access requests."""
        return {"home": str(self.root), "exported_at": datetime.now().astimezone().isoformat(),
                "episodes": [e.model_dump(mode="json") for e in self.store.list()],
                "versions": [{"version": v.name, **v.manifest} for v in self.registry.history()],
                "current_version": self.registry.current_name()}

    def purge(self) -> dict[str, Any]:
        """Delete this home for good: episodes, every model version, sleep reports, logs, config.
        Refused while a sleep runs; the store is closed first."""
        import shutil

        from .sleep.lock import sleep_lock

        n_eps, n_versions = self.store.tally()["memories"], len(self.registry.names())
        with sleep_lock(self.root, what="purge"):
            dropped = self.store.drop_server_collection()  # a Chroma server keeps the episodes outside the home
            self.close()
            self._engine = None
            for name in HOME_ENTRIES:
                child = self.root / name
                if name not in ("sleep.lock", "sleep.json") and (child.exists() or child.is_symlink()):
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        for name in ("sleep.lock", "sleep.json"):
            (self.root / name).unlink(missing_ok=True)
        kept = sorted(c.name for c in self.root.iterdir()) if self.root.is_dir() else []
        if not kept:  # only agentsleep's own entries go: files a user put in the folder stay, and so does it
            self.root.rmdir()
        out = {"purged": str(self.root), "episodes": n_eps, "versions": n_versions}
        out = {**out, "kept": kept} if kept else out
        return {**out, "server_collection": dropped} if dropped else out

    def forget(self, episode_id: str | list[str] | None = None, *, query: str | None = None, k: int = 1,
               fallback: bool = False, namespace: str = "default") -> dict[str, Any]:
        """Forget exactly: delete from the store AND schedule the weights to be rebuilt without it.
        `episode_id` may be a list: every id is checked first, then all are forgotten together.

        The next sleep starts again from the last version that predates the earliest
        forgotten episode and re-consolidates every later episode except the forgotten
        ones. Until then `status` lists the versions still holding forgotten data;
        `fallback=True` serves that clean version immediately.
        """
        from .sleep.lock import sleep_lock
        from .sleep.select import load_rebuild

        if (episode_id is None) == (query is None):
            raise InputError("forget: give an episode id or --query, not both")
        if episode_id is not None and not episode_id:
            raise InputError("forget: the episode id is empty; see `agentsleep recall` for ids")
        if not self.writable:
            raise InputError("forget: this home is open read-only; open it writable to forget")
        if isinstance(episode_id, (list, tuple)):  # several at once: all or none, under one lock
            if not episode_id or not all(isinstance(i, str) and i for i in episode_id):
                raise InputError("forget: a list of episode ids must hold at least one id, all non-empty strings")
            targets = list(episode_id)
        else:
            targets = [episode_id] if episode_id else [e.parent_id or e.id for e in self.recall(query, k, namespace=namespace)
                                                       if _matches_query(e, query)]
        if not targets:
            raise InputError(f"forget: nothing matches {query!r} closely enough (a word in common, or a similarity "
                             f"of at least {FORGET_MIN_SIMILARITY}); find the memory with `agentsleep recall` and "
                             "forget it by id")
        with sleep_lock(self.root, what="forget"):
            # Every id first (an unknown one fails before anything changes); then the record of the forgetting,
            # the dream writer and the rebuild plan; the deletes last. A crash or a store error after the record
            # is finished by the next writable open (`finish_forgets`: the stores, and a rebuild plan for any
            # serving version that still holds it), and recall and get hide the ids meanwhile.
            removed = list(dict.fromkeys(i for t in dict.fromkeys(targets) for i in self.store.family(t)))
            ledger = self.store.ledger
            ledger.forget(removed, reason=f"query {query!r}" if query else "by id", fallback=fallback)
            holders, deleted = self._after_forget_record(removed, fallback=fallback)
            self.store.delete_ids(removed)
            ledger.forget_done(removed)
            plan = load_rebuild(self.root)
        return {"forgotten": removed, "versions_holding_it": sorted(holders),
                "versions_deleted": deleted, "rebuild_from": plan["from"] if plan else None,
                "serving": self.registry.current_name()}

    def _plan_rebuild(self, removed: list[str], *, fallback: bool = False) -> set[str]:
        """Schedule the weights to be rebuilt without `removed`: the next sleep starts from the last version
        of the serving lineage that predates them (an older start asked for earlier is kept). A plan left by
        an earlier forget whose start now holds a forgotten episode (after a rollback, its start need not be
        on the serving lineage) starts from that start's last clean ancestor instead. Returns the versions
        holding them."""
        from .sleep.select import load_rebuild, save_rebuild

        held = self.store.ledger.versions_of(removed)
        lineage = self.registry.lineage()
        names = [v.name for v in lineage]
        holders = {v.name for v in lineage if set(v.manifest.get("episode_ids", [])) & set(removed)}
        holders |= {v for v in held.values() if v in names}
        plan = load_rebuild(self.root)
        if holders:
            first = min(names.index(h) for h in holders)
            clean = names[first - 1]
            tainted = names[first:]
            if plan:  # an earlier forget already asked for an older start: keep the older one
                if plan["from"] in names and names.index(plan["from"]) < names.index(clean):
                    clean = plan["from"]
                tainted = sorted(set(tainted) | set(plan["versions"]))
            plan = {"from": clean, "versions": tainted, "forgotten": removed}
            save_rebuild(self.root, plan)
        plan = self._clean_rebuild_start()
        if holders and fallback:
            self.registry.materialise(plan["from"])
            self.registry.set_current(plan["from"])
            with self._lock:
                if self._engine is not None:
                    self._engine.swap(self.registry.current())
        return holders

    # -- the model ----------------------------------------------------------
    def current_version(self) -> Version:
        return self.registry.current()

    @property
    def engine(self):
        """In-process model serving the current version (reloaded when CURRENT moves)."""
        from .serving.engine import Engine

        with self._lock:
            if self._engine is None:
                self._engine = Engine(self.config.model)
            cur = self.registry.current()
            if self._engine.version is None or self._engine.version.name != cur.name:
                self._engine.swap(cur)
            return self._engine

    def ask(self, question: str, *, use_memory: bool = True, k: int | None = None,
            max_new_tokens: int | None = None, namespace: str = "default") -> dict[str, Any]:
        """Answer with the current version; by default with the top-k memories in the prompt."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("ask: the question is empty")
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                           or not 1 <= max_new_tokens <= 32768):
            raise InputError(f"ask: max_new_tokens must be 1..32768, got {max_new_tokens!r}")
        memories, memory_error = [], None
        if use_memory:
            try:  # the store being down must not silence the agent: answer from the weights, say so
                memories = self.recall(question, k, namespace=namespace) if self.store.count() else []
            except StoreUnavailableError as e:
                memory_error = str(e)
                log.warning("answering without memories: %s", e)
        answer, version = self.engine.answer(question, [m.prompt_text() for m in memories],
                                             max_new_tokens=max_new_tokens)
        out = {"answer": answer, "model_version": version, "memories_used": [m.id for m in memories]}
        if memory_error:
            out["memory_error"] = memory_error
        return out

    # -- asleep ---------------------------------------------------------------
    def sleep(self, *, max_episodes: int | None = None, dry_run: bool = False, progress=None):
        """Consolidate unconsolidated episodes into a new model version (see agentsleep.sleep)."""
        from .sleep.pipeline import run_sleep

        if max_episodes is not None and (isinstance(max_episodes, bool) or not isinstance(max_episodes, int)
                                         or max_episodes < 1):
            raise InputError(f"sleep: max_episodes must be a whole number of at least 1, got {max_episodes!r}")
        grown = None if dry_run else self._grow_if_due(f"every {self.config.sleep.grow_every} sleeps")
        report = run_sleep(self, max_episodes=max_episodes, dry_run=dry_run, progress=progress)
        if report.status == "rejected" and self.config.sleep.grow_on_reject and \
                {"recall_gain", "retention", "net"} & set(report.metrics.get("gate_failed") or ()):
            grown = self._grow_if_due("after a sleep rejected for recall or retention", force=True)
        if grown:
            report.reasons.append(grown)
        with self._lock:  # the next ask uses the promoted version
            if self._engine is not None and report.status == "promoted":
                self._engine.swap(self.registry.current())
        return report

    def _grow_if_due(self, why: str, force: bool = False) -> str | None:
        """The automatic growth policy (sleep.grow_every / sleep.grow_on_reject): add blocks so the
        next sleep trains fresh capacity. Returns a line for the sleep report, or None."""
        cfg = self.config.sleep
        if not force:
            if not cfg.grow_every or not self.store.list(unconsolidated_only=True):
                return None
            since = 0
            for v in reversed(self.registry.lineage()):
                if v.manifest.get("kind") != "sleep":
                    break
                since += 1
            if since < cfg.grow_every:
                return None
        grown = sum(len(v.manifest.get("new_layers") or []) for v in self.registry.lineage() if v.manifest.get("kind") == "grow")
        if grown + cfg.grow_blocks > cfg.max_grown_blocks:
            return (f"no growth ({why}): the lineage already holds {grown} inserted blocks and sleep.max_grown_blocks "
                    f"is {cfg.max_grown_blocks}")
        try:
            v = self.grow(cfg.grow_blocks)
        except AgentsleepError as e:
            return f"growth policy ({why}) did not grow: {e}"
        return f"growth policy ({why}): {v.name} adds {cfg.grow_blocks} block(s), layers {v.manifest['layers']['before']} -> {v.manifest['layers']['after']}"

    def history(self) -> list[dict[str, Any]]:
        """Every version, oldest first, with its parent (the lineage tree), shape, sleep and gate metrics."""
        from .models.lineage import shape

        cur = self.registry.current_name()
        out = []
        for v in self.registry.history():
            m = v.manifest
            out.append({"version": v.name, "current": v.name == cur, "parent": v.parent,
                        "sleep_id": m.get("sleep_id"), "created_at": m.get("created_at"),
                        "episodes": len(m.get("episode_ids", [])), "metrics": m.get("metrics", {}),
                        "kind": m.get("kind", "sleep") if not v.is_base else "base",
                        "expert": (v.path / "adapter").is_dir(), **shape(v),
                        "storage": None if v.is_base else m.get("storage", "full")})
        return out

    def diff(self, a: str, b: str | None = None) -> dict[str, Any]:
        """What changed from version `a` to `b` (default: current): lineage steps, shape, episodes, weights."""
        from .models.lineage import diff

        return diff(self.registry, a, b or self.registry.current_name())

    def rollback(self, version: str) -> Version:
        """Point CURRENT at an earlier version. Episodes absorbed only by versions
        outside its lineage become unconsolidated again, so the next sleep retakes them."""
        from .sleep.lock import sleep_lock

        with sleep_lock(self.root):
            lineage = self.registry.lineage(version)  # its history read: a broken one leaves CURRENT as it is
            gone = self.store.ledger.forgotten_among(
                list({e for x in lineage for e in x.manifest.get("episode_ids") or []}))
            if gone:
                raise InputError(f"rollback: {version} holds {len(gone)} forgotten episode(s) in its weights; "
                                 "forgetting is not undone by a rollback (pick a version from before them)")
            self.registry.materialise(version)  # rebuilt and checked before CURRENT moves
            v = self.registry.set_current(version)
            keep = {x.name for x in lineage}
            ledger = self.store.ledger
            ledger.unmark_versions([n for n in self.registry.names() if n not in keep])
            for x in lineage:
                ids = x.manifest.get("episode_ids") or []
                if ids:
                    ledger.mark(ids, x.name, x.manifest.get("sleep_id", "rollback"))
        with self._lock:
            if self._engine is not None:
                self._engine.swap(v)
        return v

    def grow(self, blocks: int = 1) -> Version:
        """Publish a version with `blocks` identity-initialised decoder blocks (same function,
        more capacity); the next sleep trains only the new blocks. The version stores which parent
        block each layer copies (no weights) unless a snapshot is due."""
        from .models import deltas
        from .models.growth import grow, layer_count, layer_map
        from .models.loader import load, resolve
        from .sleep.lock import sleep_lock
        from .sleep.publish import write_version

        with sleep_lock(self.root, what="grow"):
            parent = self.registry.current()
            src = Path(resolve(parent.weights, progress=lambda m: None))
            model, tok = load(str(src), dtype=self.config.model.dtype, device="cpu")
            before = layer_count(model)
            new_layers = grow(model, blocks)
            lmap = layer_map(new_layers, layer_count(model))
            sd = deltas.regrow(deltas.load_state(src), lmap)
            staging = self.registry.new_staging()
            try:
                v = write_version(self.registry, staging, src, sd, {
                    "parent": parent.name, "kind": "grow", "new_layers": new_layers,
                    "layers": {"before": before, "after": layer_count(model)},
                    "parameters": sum(p.numel() for p in model.parameters())},
                    {"layers": lmap}, tok=tok, config=model.config)
            except BaseException:
                import shutil

                shutil.rmtree(staging, ignore_errors=True)
                raise
        with self._lock:
            if self._engine is not None:
                self._engine.swap(v)
        return v

    def status(self) -> dict[str, Any]:
        reg = self.registry
        cur = reg.current()
        tally = self.store.tally()
        return {
            "home": str(self.root),
            "episodes": tally["memories"],  # a document stored in chunks is one episode here
            "unconsolidated": tally["unconsolidated"],
            "chunks": tally["chunks"],
            "current_version": cur.name,
            "versions": len(reg.names()),
            "base_model": self.config.model.base,
            "memory_backend": self.config.memory.backend,
            "paths": {"config": str(self.root / "config.toml"), "memory": str(self.root / "memory"),
                      "registry": str(reg.root), "sleeps": str(self.root / "sleeps"), "logs": str(self.root / "logs")},
            "last_sleep": _last_sleep(self.root / "sleeps"),
            "pending_forget": _pending_forget(self.root, set(reg.names())),
            "superseded": _superseded(self.store),
            "held_back": self.held_back(),
        }

    def held_back(self) -> list[dict[str, Any]]:
        """Episodes whose consolidation failed and that wait out a backoff or are set aside, with why:
        each failed attempt counts per episode (sleep.retry_backoff, sleep.quarantine_after)."""
        ledger = self.store.ledger
        now = ledger.sleeps()
        rows = []
        for a in sorted(ledger.attempts().values(), key=lambda a: (-a.quarantined, a.episode_id)):
            state = ("set aside" if a.quarantined else
                     f"waits {a.wait_until - now} more sleep(s)" if a.waiting(now) else "retried at the next sleep")
            rows.append({"episode_id": a.episode_id, "state": state, "failures": a.failures, "failed": a.failed,
                         "last_sleep": a.sleep_id, "reason": a.reason})
        return rows

    def retry(self, episode_ids: list[str] | None = None) -> list[str]:
        """Release set-aside or backed-off episodes (all with None): the next sleep takes them afresh."""
        if episode_ids is not None:
            held = {r["episode_id"] for r in self.held_back()}
            for e in episode_ids:
                if e not in held:
                    raise InputError(f"episode {e!r} is not held back (see `agentsleep status`); nothing to retry")
        from .sleep.lock import sleep_lock

        with sleep_lock(self.root, what="retry"):  # not while a sleep is counting the same attempts
            return self.store.ledger.release(episode_ids)


def _probe_writable(root: Path) -> None:
    probe = root / f".write-probe-{os.getpid()}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise HomeError(f"home {root}: not writable ({e.strerror}); fix its permissions or pass another --home") from None
    mode = stat.S_IMODE(root.stat().st_mode)
    if mode & 0o077:
        try:
            os.chmod(root, 0o700)
        except OSError:
            pass


def _last_sleep(d: Path) -> dict[str, Any] | None:
    """The newest sleep: its report, or for a sleep that failed, was stopped or still runs (those write
    only their journal) the journal's status and error. Sleep ids sort by start time."""
    from .atomic import read_json

    try:
        dirs = sorted((p for p in d.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)
    except OSError:
        return None
    for sd in dirs:
        r = read_json(sd / "report.json") or read_json(sd / "journal.json")
        if isinstance(r, dict) and r.get("status"):
            out = {k: r.get(k) for k in ("sleep_id", "status", "version", "finished_at")}
            return {**out, "error": r["error"]} if r.get("error") else out
    return None


def _superseded(store: EpisodeStore) -> dict[str, str]:
    """Episodes a newer one states another value for (old id -> new id): recallable, no longer rehearsed."""
    from .memory.supersede import superseded

    return superseded(store.ledger.path)


def _pending_forget(root: Path, versions: set[str]) -> dict[str, Any] | None:
    """The rebuild a forget asked for; of the versions holding forgotten data, those still in `versions` (the
    registry's: the others were deleted already)."""
    from .sleep.select import load_rebuild

    plan = load_rebuild(root)
    if not plan:
        return None
    return {"versions_holding_forgotten_data": [v for v in plan["versions"] if v in versions],
            "next_sleep_rebuilds_from": plan["from"]}


def parse_since(value: str | None, flag: str = "--since") -> datetime | None:
    """An ISO date/time from the command line (without a zone: local time, as the store reads it)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{flag} {value!r}: not an ISO date/time (e.g. 2026-11-25 or 2026-11-25T14:00)") from None
