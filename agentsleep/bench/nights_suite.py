"""Night after night: N nights of K new first-person facts, one `home.sleep()` a night, every fact asked each morning.

Per seed, a fresh home on the default config (sleep.seed.seed = the seed) and the fact set written for
this suite (bench/night_facts.py, never used for tuning). Night n: remember the night's K facts (and,
from night 3 on, one statement that changes an earlier fact's value), then one sleep. Each morning,
closed-book on the paraphrased questions with the serving version:
- accuracy per night's set (the night-by-set matrix), with each fact's current answer (an updated
  fact's new value); cumulative recall over every fact told so far;
- retention: each set's accuracy over its first-morning level (the morning after its night, or after the
  first promoted night since, when its own night was rejected), both over the set's facts that have not
  been updated since (an update's new answer is the `updated` figure, not a loss of the old one);
- updated facts: the share of updates already slept on that get the new value (and the old one);
- drift KL against the base version on the gate's generic prompts, and the sleep's own gate metrics;
- disk: the registry's growth that night, and as a share of the base model's size;
- seconds of the sleep, its status and reasons.
Figures over seeds are mean, min and max.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..config import env_overrides
from ..errors import InputError
from ..progress import silent
from .night_facts import DEV_UPDATES, EVERYDAY_NIGHTS, EVERYDAY_UPDATES, NIGHTS, UPDATES, NightFact, Update, dev_nights

# The development variants (`--dev --dev-set NAME`): what each tells, and how the report names it.
DEV_SETS = {
    "bench": (lambda: (dev_nights(8), DEV_UPDATES), "bench/facts.py in the first person"),
    "everyday": (lambda: (EVERYDAY_NIGHTS, EVERYDAY_UPDATES), "everyday facts asked in other words"),
}


def dev_set_facts(name: str) -> tuple[list[list[NightFact]], list[Update]]:
    """The nights and updates of development set `name`; the CLI calls it before any suite runs."""
    if name not in DEV_SETS:
        raise InputError(f"bench nights: --dev-set must be one of {', '.join(DEV_SETS)}, got '{name}'")
    return DEV_SETS[name][0]()

TARGETS = {"recall": 0.85, "retention": 0.9, "updated": 0.75, "disk_share": 0.05}
# a long run (20 nights) is judged on what a month needs: recall held, and a night's cost flat
LONG_NIGHTS, LONG_TARGETS = 20, {"recall": 0.75, "time_ratio": 1.3, "disk_share": 0.05}


def _size(p: Path, skip: str = "cache") -> int:
    """Bytes under `p` (hard links counted once: versions may share files), without its `skip` folder
    (the registry's cache of rebuilt weights: regenerable, not what a version stores)."""
    seen, total = set(), 0
    for f in p.rglob("*"):
        if f.relative_to(p).parts[0] == skip:
            continue
        try:
            st = f.lstat()
        except OSError:
            continue
        if f.is_file() and not f.is_symlink() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def schedule(nights: int, k: int, dev: bool = False, dev_set: str = "bench") -> list[tuple[list[NightFact], Update | None]]:
    """What is told each night: its K facts, and from night 3 on the oldest update whose fact was told
    (an earlier night's fact among the first K) and not yet changed. `dev`: the development set `dev_set`
    (a key of DEV_SETS, 8 facts a night) and its updates instead of the test set."""
    facts, updates = dev_set_facts(dev_set) if dev else (NIGHTS, UPDATES)
    if not 1 <= nights <= len(facts):
        with_set = f" with --dev{'' if dev_set == 'bench' else f' --dev-set {dev_set}'}" if dev else ""
        raise InputError(f"bench nights: --nights must be 1..{len(facts)}{with_set}, got {nights}")
    if not 1 <= k <= len(facts[0]):
        raise InputError(f"bench nights: --facts-per-night must be 1..{len(facts[0])}, got {k}")
    used: set[tuple[int, int]] = set()
    out = []
    for n in range(nights):
        upd = None
        if n >= 2:
            upd = next((u for u in updates if u.night < n and u.index < k and (u.night, u.index) not in used), None)
            if upd:
                used.add((upd.night, upd.index))
        out.append((list(facts[n][:k]), upd))
    return out


def _current(plan, upto: int) -> list[list[NightFact]]:
    """Each set told by night `upto` with its facts' current answers (updates told by then applied)."""
    sets = [list(facts) for facts, _ in plan[:upto + 1]]
    for _, u in plan[:upto + 1]:
        if u is not None:
            old = sets[u.night][u.index]
            sets[u.night][u.index] = NightFact(u.text, old.question, u.answer)
    return sets


def _checkpoint(path: Path, key: dict[str, Any], home: Path) -> dict[str, Any] | None:
    """The mornings a run of the same code and plan measured before it was stopped (`progress.json`), when
    its home is still there."""
    saved = _saved_seed(path, key)
    return saved if saved and (home / "config.toml").exists() else None


class _Slept:
    """A night's sleep that ended before the run was stopped, read back from its report.json."""

    def __init__(self, rep: dict[str, Any]):
        self.sleep_id, self.status, self.reasons = rep["sleep_id"], rep["status"], rep.get("reasons") or []
        self.metrics, self.seconds = rep.get("metrics") or {}, float(rep.get("duration_s") or 0)


def _ended_sleep(home: Path, known: set[str]) -> _Slept | None:
    """The sleep that reached a verdict after the last saved morning (the run stopped before measuring it)."""
    ended = []
    for f in (home / "sleeps").glob("*/report.json"):
        try:
            rep = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if rep.get("sleep_id") not in known and rep.get("status") in ("promoted", "rejected"):
            ended.append(rep)
    return _Slept(max(ended, key=lambda r: r.get("started_at") or 0)) if ended else None


def set_retention(sizes: list[int], missed: list[list[int]], first_missed: list[list[int] | None],
                  updated: set[tuple[int, int]]) -> list[float | None]:
    """Each set's accuracy this morning over its accuracy the morning its first level was read, counted on
    its facts not updated since (set i, fact j in `updated`): an updated fact is asked for its new answer,
    which its first morning never knew. None before the first level, or when that level was zero."""
    out: list[float | None] = []
    for i, n in enumerate(sizes):
        fm = first_missed[i] if i < len(first_missed) else None
        keep = [j for j in range(n) if (i, j) not in updated]
        then = sum(j not in fm for j in keep) if fm is not None else 0
        now = sum(j not in missed[i] for j in keep)
        out.append(round(now / then, 3) if then else None)
    return out


def first_missed_of(mornings: list[dict[str, Any]], n_sets: int) -> list[list[int] | None]:
    """Each set's missed facts on the morning its first level was read (from the saved mornings, so that a
    resumed run has them too)."""
    out: list[list[int] | None] = [None] * n_sets
    for m in mornings:
        for i, level in enumerate(m.get("first_level") or []):
            if i < n_sets and out[i] is None and level is not None and i < len(m.get("missed") or []):
                out[i] = list(m["missed"][i])
    return out


def first_levels(first: list[float | None], acc: list[float], promoted: bool) -> list[float | None]:
    """Each set's first-morning level after this morning (`acc`, one more set than `first`): its accuracy the
    first morning after a promoted night. A set told on a rejected night waits for the night that takes it,
    so that its retention is not read against the zero of a night that learned nothing."""
    first = first + [None]
    return [a if f is None and promoted else f for f, a in zip(first, acc)]


def _one_seed(seed_dir: Path, seed: int, plan, config: dict, key: dict[str, Any], say, progress) -> dict[str, Any]:
    """One seed's nights. After each morning the figures so far are saved (`progress.json`, atomic): a run
    stopped mid-way (a 20-night run takes hours) resumes at the next night on the same home, taking the
    episodes it already told and a sleep that already ended as they are."""
    from ..config import Config
    from ..home import Home
    from ..models.loader import load, resolve
    from ..sleep.gate import drift_kl
    from ..sleep.generic_prompts import generic_pool
    from ..textmatch import contains_answer
    from .sleep_suite import closed_book

    root, ckpt = seed_dir / "home", seed_dir / "progress.json"
    state = _checkpoint(ckpt, key, root)
    if state is None:
        shutil.rmtree(root, ignore_errors=True)
        Home.init(root, config=Config.model_validate(_merge(config, {"sleep": {"seed": {"seed": seed}}})))
        state = {"key": key, "mornings": [], "first": [], "registry_bytes": None}
    else:
        say(f"nights: seed {seed}: resuming after night {len(state['mornings'])} (saved by a run of the same code and plan)")
    mornings: list[dict[str, Any]] = state["mornings"]
    first: list[float | None] = state["first"]
    resumed_at = len(mornings) if mornings else None  # the one night a stopped run may have begun
    with Home.open(root) as home:
        base = home.registry.lineage(home.registry.current_name())[0]  # the base, also on a resumed run
        base_bytes = _size(Path(resolve(base.weights, progress=lambda m: None)))
        ref, tok = load(base.weights)
        gcfg = home.config.sleep
        drift = [tuple(x) for x in generic_pool(ref, tok, home.registry, base.name, gcfg.seed.replay_prompts,
                                                gcfg.gate.drift_prompts)["drift"]]
        if state.get("in_context") is None:  # for scale: the base model asked with each fact in context
            told_facts = [f for facts, _ in plan for f in facts]
            state["in_context"] = round(closed_book(ref, tok, told_facts, [f.text for f in told_facts])[0], 3)
        for n, (facts, upd) in enumerate(plan):
            if n < len(mornings):
                continue
            items = [{"text": f.text, "source": "user"} for f in facts]
            if upd is not None:
                items.append({"text": upd.text, "source": "user"})
            resuming = n == resumed_at
            if not resuming or len(home.store.list()) <= mornings[-1]["remembered"]:  # else told before the stop
                home.remember_many(items)
            before = state["registry_bytes"] if state["registry_bytes"] is not None else _size(home.registry.root)
            rep = _ended_sleep(root, {m["sleep_id"] for m in mornings}) if resuming else None
            if rep is None:
                t = time.time()
                rep = home.sleep(progress=progress)
                seconds = time.time() - t
            else:
                seconds = rep.seconds
            state["registry_bytes"] = _size(home.registry.root)
            disk = state["registry_bytes"] - before
            live = home.engine.live
            sets = _current(plan, n)
            read = [closed_book(live.model, live.tok, s) for s in sets]
            acc = [round(a, 3) for a, _ in read]
            missed = [[j for j, (f, a) in enumerate(zip(s, answers)) if not contains_answer(a, f.answer)]
                      for s, (_, answers) in zip(sets, read)]  # which facts, so a slip can be traced to one
            first[:] = first_levels(first, acc, str(rep.status) == "promoted")
            told = sum(len(s) for s in sets)
            updates = [(u, plan[u.night][0][u.index]) for _, u in plan[:n + 1] if u is not None]
            upd_new = upd_old = None
            if updates:
                answers = closed_book(live.model, live.tok, [NightFact(u.text, f.question, u.answer) for u, f in updates])[1]
                upd_new = round(sum(contains_answer(a, u.answer) for a, (u, _) in zip(answers, updates)) / len(updates), 3)
                upd_old = round(sum(contains_answer(a, f.answer) for a, (_, f) in zip(answers, updates)) / len(updates), 3)
            m = rep.metrics or {}
            eps = home.store.list()
            mornings.append({
                "consolidated": sum(bool(e.consolidated_in) and not e.consolidated_in.startswith("skipped:") for e in eps),
                "remembered": len(eps),
                "night": n + 1, "status": str(rep.status), "reasons": list(rep.reasons), "sleep_id": rep.sleep_id,
                "version": live.version.name, "seconds": round(seconds, 1), "accuracy": acc, "missed": missed,
                "recall": round(sum(a * len(s) for a, s in zip(acc, sets)) / told, 3), "told": told,
                "first_level": list(first),
                "updated": upd_new, "updated_old_value": upd_old, "updates": len(updates),
                "update_told": upd.text if upd else None,
                "drift_base": round(drift_kl(live.model, live.tok, drift, ref=ref), 4),
                "gate_drift": m.get("drift_kl"), "gate_drift_base": m.get("drift_kl_base"), "gate_failed": m.get("gate_failed"),
                "disk_bytes": disk, "disk_share": round(disk / max(base_bytes, 1), 4),
            })
            updated_facts = {(u.night, u.index) for _, u in plan[:n + 1] if u is not None}
            mornings[-1]["retention"] = set_retention([len(x) for x in sets], missed,
                                                      first_missed_of(mornings, len(sets)), updated_facts)
            atomic_write_json(ckpt, state)
            say(f"nights: seed {seed}, night {n + 1} {rep.status} in {seconds:.0f} s: recall {mornings[-1]['recall']:.2f}, "
                f"sets {acc}, updated {upd_new}, disk {disk / 1e6:.1f} MB")
        gate = home.config.sleep.gate  # the gate's bound on drift from the base (cumulative), else its nightly one
        max_kl = getattr(gate, "max_base_drift_kl", gate.max_drift_kl)
        del ref
    return {"seed": seed, "mornings": mornings, "base_bytes": base_bytes, "max_drift_kl": max_kl,
            "in_context": state["in_context"]}


def _seed_key(nights: int, k: int, dev: bool, config: dict, seed: int, dev_set: str = "bench") -> dict[str, Any]:
    """What a seed's result depends on: the plan, the config overrides, the seed, and the code (commit and
    AGENTSLEEP_* overrides, report.provenance). A seed takes about 40 minutes on 2 cores (5 nights), so
    each is saved when it ends, and its mornings as they are measured: a rerun after an interruption starts
    at the first night not saved."""
    from .report import provenance

    p = provenance()
    return {"nights": nights, "facts_per_night": k, "dev": dev, "dev_set": dev_set if dev else None, "config": config,
            "seed": seed, "commit": p["commit"], "defaults": p["config"], "versions": p["versions"]}


def _saved_seed(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """A seed's saved result when it was measured the same way (an unknown commit never matches)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return old if key["commit"] and old.get("key") == json.loads(json.dumps(key, default=str)) else None


def _spread(xs: list[float | None]) -> dict[str, float] | None:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"mean": round(statistics.fmean(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def run(out_dir: Path, *, say=print, progress=silent, nights: int = 5, facts_per_night: int = 8, seeds: int = 3,
        config: dict[str, Any] | None = None, dev: bool = False, dev_set: str = "bench") -> dict[str, Any]:
    """`config` overrides the default config (tests use a tiny model); the benchmark runs without it.
    `dev`: the development facts of `dev_set` (tune on these), not the held-out test set."""
    if not 1 <= seeds <= 10:
        raise InputError(f"bench nights: --seeds must be 1..10, got {seeds}")
    plan = schedule(nights, facts_per_night, dev, dev_set)
    runs = []
    for s in range(seeds):
        key = _seed_key(nights, facts_per_night, dev, config or {}, s, dev_set)
        saved = _saved_seed(out_dir / f"seed-{s}" / "result.json", key)
        if saved:
            say(f"nights: seed {s}: reusing the result saved on {saved['measured']} by a run of the same code and plan")
        else:
            saved = {**_one_seed(out_dir / f"seed-{s}", s, plan, config or {}, key, say, progress),
                     "measured": time.strftime("%Y-%m-%d"), "key": key}
            atomic_write_json(out_dir / f"seed-{s}" / "result.json", saved)
        runs.append(saved)
    per_night = []
    for n in range(nights):
        ms = [r["mornings"][n] for r in runs]
        per_night.append({
            "night": n + 1, "promoted": sum(m["status"] == "promoted" for m in ms), "seeds": len(ms),
            "recall": _spread([m["recall"] for m in ms]),
            "consolidated": _spread([m["consolidated"] / max(m["remembered"], 1) for m in ms]),
            "min_retention": _spread([min((x for x in m["retention"] if x is not None), default=None) for m in ms]),
            "updated": _spread([m["updated"] for m in ms]), "drift_base": _spread([m["drift_base"] for m in ms]),
            "disk_share": _spread([m["disk_share"] for m in ms]), "seconds": _spread([m["seconds"] for m in ms]),
            "matrix_row": [round(statistics.fmean(m["accuracy"][j] for m in ms), 3) for j in range(n + 1)],
        })
    last = [r["mornings"][-1] for r in runs]
    max_kl = runs[0]["max_drift_kl"]
    targets = {
        "every_night_promoted": all(m["status"] == "promoted" for r in runs for m in r["mornings"]),
        "recall": _spread([m["recall"] for m in last]),
        "min_retention": _spread([min((x for x in m["retention"] if x is not None), default=None) for m in last]),
        "updated": _spread([m["updated"] for m in last]),
        "drift_base_within_gate": all(m["drift_base"] <= max_kl for m in last),
        "max_disk_share": max(m["disk_share"] for r in runs for m in r["mornings"]),
        "in_context": _spread([r["in_context"] for r in runs if r.get("in_context") is not None]),
    }
    # the last night's sleep against night 2's (night 1 has no rehearsal or earlier facts to re-ask)
    targets["time_ratio"] = _spread([r["mornings"][-1]["seconds"] / r["mornings"][1]["seconds"] for r in runs
                                     if nights >= 2 and r["mornings"][1]["seconds"]])
    targets["long"] = nights >= LONG_NIGHTS
    if targets["long"]:
        targets["met"] = bool(targets["recall"] and targets["recall"]["min"] >= LONG_TARGETS["recall"]
                              and targets["time_ratio"] and targets["time_ratio"]["max"] <= LONG_TARGETS["time_ratio"]
                              and targets["max_disk_share"] <= LONG_TARGETS["disk_share"])
    else:
        targets["met"] = bool(targets["every_night_promoted"] and targets["recall"]
                              and targets["recall"]["min"] >= TARGETS["recall"]
                              # nothing measured is not a target met (e.g. no update told in so few nights)
                              and targets["min_retention"] is not None
                              and targets["min_retention"]["min"] >= TARGETS["retention"]
                              and targets["updated"] is not None and targets["updated"]["min"] >= TARGETS["updated"]
                              and targets["drift_base_within_gate"] and targets["max_disk_share"] <= TARGETS["disk_share"])
    return {"nights": nights, "facts_per_night": facts_per_night, "seeds": seeds, "config": config or {}, "dev": dev,
            "dev_set": dev_set if dev else None,
            "env": env_overrides(os.environ),  # AGENTSLEEP_* settings the homes ran with
            "per_night": per_night,
            "runs": runs, "targets": targets, "max_drift_kl": max_kl, "base_bytes": runs[0]["base_bytes"]}


def plot(res: dict[str, Any], path: Path) -> Path:
    """The night-by-set matrix (mean over seeds): row = morning after night n, column = the set told on night j."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = res["nights"]
    grid = np.full((n, n), np.nan)
    for i, row in enumerate(res["per_night"]):
        grid[i, :len(row["matrix_row"])] = row["matrix_row"]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 + 0.6 * n), max(3.5, 1.0 + 0.5 * n)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    for i in range(n):
        for j in range(i + 1):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if grid[i, j] < 0.6 else "black")
    ax.set(xlabel="set (night told)", ylabel="morning after night", xticks=range(n), yticks=range(n),
           xticklabels=range(1, n + 1), yticklabels=range(1, n + 1),
           )
    ax.set_title(f"closed-book accuracy, mean of {res['seeds']} seed(s)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fmt(s: dict[str, float] | None, pct: bool = False) -> str:
    if not s:
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.2f}")
    return f"{f(s['mean'])} ({f(s['min'])}-{f(s['max'])})" if s["min"] != s["max"] else f(s["mean"])


def _config_note(res: dict[str, Any]) -> str:
    """'the default config', or the overrides the run used (its own, and AGENTSLEEP_* from the environment)."""
    parts = [json.dumps(x) for x in (res.get("config"), res.get("env")) if x]
    return "config overrides " + " and ".join(parts) if parts else "the default config"


def markdown(res: dict[str, Any], docs_dir: Path) -> str:
    dev, dev_set = res.get("dev"), res.get("dev_set") or "bench"
    tag = "" if not dev else "_dev" if dev_set == "bench" else f"_dev_{dev_set}"
    png = plot(res, docs_dir / f"bench_nights{tag}_{res['nights']}x{res['facts_per_night']}.png")
    rows = [f"| {p['night']} | {p['promoted']}/{p['seeds']} | {_fmt(p.get('consolidated'), pct=True)} | "
            f"{_fmt(p['recall'])} | {_fmt(p['min_retention'])} | "
            f"{_fmt(p['updated'])} | {_fmt(p['drift_base'])} | {_fmt(p['disk_share'], pct=True)} | {_fmt(p['seconds'])} |"
            for p in res["per_night"]]
    why = [f"- seed {r['seed']}, night {m['night']}: {m['status']}: {'; '.join(m['reasons'])}"
           for r in res["runs"] for m in r["mornings"] if m["status"] != "promoted"]
    t = res["targets"]
    checks = [
        f"- every night promoted: {'yes' if t['every_night_promoted'] else 'no'}",
        f"- cumulative recall after night {res['nights']}: {_fmt(t['recall'])} (target >= {TARGETS['recall']})",
        f"- lowest set against its first-morning level: {_fmt(t['min_retention'])} (target >= {TARGETS['retention']})",
        f"- updated facts giving the new value: {_fmt(t['updated'])} (target >= {TARGETS['updated']})",
        f"- drift KL against the base within the gate's bound {res['max_drift_kl']}: {'yes' if t['drift_base_within_gate'] else 'no'}",
        f"- largest registry growth in a night: {100 * t['max_disk_share']:.1f}% of the base model (target <= 5%)",
    ]
    if t.get("in_context"):
        checks.append(f"- for scale, the base model asked each fact's question with the fact in context, in `ask`'s layout: "
                      f"{_fmt(t['in_context'])} (how much of the set the model can read from a note at all)")
    if t.get("time_ratio"):
        checks.append(f"- night {res['nights']}'s sleep against night 2's: {_fmt(t['time_ratio'])}x"
                      + (f" (target <= {LONG_TARGETS['time_ratio']})" if t.get("long") else ""))
    if t.get("long"):
        checks.insert(0, f"- {res['nights']}-night targets: cumulative recall >= {LONG_TARGETS['recall']}, the last night's "
                         f"sleep <= {LONG_TARGETS['time_ratio']}x night 2's, registry growth <= 5% a night: "
                         f"{'met' if t['met'] else 'not met'}")
    facts = (f"the development facts: {DEV_SETS[dev_set][1]}; tune on these" if dev else
             "bench/night_facts.py, written for this suite and never used for tuning")
    return (f"{res['nights']} nights of {res['facts_per_night']} first-person facts ({facts}), from night 3 on one "
            f"update of an earlier fact a night; one `sleep()` a "
            f"night on a fresh home with {_config_note(res)}; {res['seeds']} seed{'s' * (res['seeds'] != 1)}, "
            "mean (min-max). Every fact told so far "
            "is asked closed-book each morning with its paraphrased question and its current answer.\n\n"
            "| night | promoted | episodes consolidated | cumulative recall | lowest set vs first morning | "
            "updated facts, new value | drift KL vs base | disk (share of base) | seconds |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n\nTargets after the last night:\n\n" + "\n".join(checks) + "\n\n"
            + ("Not promoted:\n\n" + "\n".join(why) + "\n\n" if why else "")
            + f"![night-by-set matrix]({png.name})\n")
