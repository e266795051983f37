"""LoCoMo long-term conversational memory (locomo_dev.json under $AGENTSLEEP_BENCH_DATA).

Each turn of a conversation is remembered as an episode (kind "turn", session
id, speaker and date in the text, dia_id in provenance). Measured:
- retrieval recall@k of the evidence turns (all QA, category 5 separately);
- answer token-F1 with retrieval (top-k turns in the prompt) on a sample;
- weights only vs retrieval vs both (`sleep_sessions` > 0): the first N sessions
  of the first conversation are remembered in a home of their own and slept in
  order, one sleep per session; then the questions whose evidence lies wholly in
  those turns (categories 1-4; category 5 counted apart) are answered by the base
  model closed-book, the base model with the top-5 slept turns (retrieval only),
  the slept model closed-book (weights only) and the slept model with the same
  turns (both), so all four score the same questions. `sleep_episodes_cap`
  bounds the turns remembered (and slept) per session; the result says which
  sessions it cut. A rejected sleep's turns are retaken by the next sleep.
The quick profile passes sleep_sessions=0: the sleeps cost minutes each.
"""
from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import AgentsleepError, InputError
from ..home import Home
from ..models import generate as gen
from ..textmatch import f1

def find_data(path: Path | None = None) -> Path | None:
    from . import data_file

    for p in (path, data_file("locomo_dev.json")):
        if p and p.is_file():
            return p
    return None


def sessions(conv: dict[str, Any]) -> list[str]:
    """session_1, session_2, ... in order, stopping at the first gap (LoCoMo numbers them densely)."""
    out = []
    while f"session_{len(out) + 1}" in conv:
        out.append(f"session_{len(out) + 1}")
    return out


def session_turns(conv: dict[str, Any], sess: str) -> list[tuple[str, str]]:
    """(dia_id, text) for one session's turns, the date and speaker folded into the text."""
    date = conv.get(f"{sess}_date_time", "")
    return [(t["dia_id"], f"[{date}] {t['speaker']}: {t['text']}") for t in conv[sess]]


def turns(conv: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(dia_id, session, text) for every turn, the date and speaker folded into the text."""
    return [(dia, sess, text) for sess in sessions(conv) for dia, text in session_turns(conv, sess)]


def _load(src: Path) -> dict[str, Any] | str:
    """The conversations, or why the file cannot be used (a skip reason, not a traceback)."""
    try:
        convs = json.loads(src.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"dataset {src} is not readable JSON ({str(e).splitlines()[0]})"
    if not isinstance(convs, dict) or not all(isinstance(c, dict) for c in convs.values()):
        return f"dataset {src} is not LoCoMo's format (an object of conversations)"
    return convs


def run(out_dir: Path, *, conversations: int = 2, ks=(5, 10), answer_sample: int = 40, say=print,
        data: Path | None = None, progress=None, sleep_sessions: int = 2,
        sleep_episodes_cap: int = 64) -> dict[str, Any]:
    if sleep_sessions < 0 or sleep_episodes_cap < 1:
        raise InputError(f"locomo: sleep_sessions must be >= 0 and sleep_episodes_cap >= 1, "
                         f"got {sleep_sessions} and {sleep_episodes_cap}")
    src = find_data(data)
    if src is None:
        say("locomo: locomo_dev.json not found (set AGENTSLEEP_BENCH_DATA to the folder holding it); skipped")
        return {"skipped": "dataset not found"}
    convs = _load(src)
    if isinstance(convs, str):
        say(f"locomo: {convs}; skipped")
        return {"skipped": convs}
    ids = list(convs)[:conversations]
    root = out_dir / "home"
    shutil.rmtree(root, ignore_errors=True)
    res: dict[str, Any] = {"conversations": ids, "k": list(ks)}
    hits = {k: [] for k in ks}
    hits5 = {k: [] for k in ks}
    latencies = []
    qa_pool = []
    with Home.open(root) as home:
        t = time.time()
        n_turns = 0
        for cid in ids:
            for dia, sess, text in turns(convs[cid]):
                home.remember(text, kind="turn", session=f"{cid}:{sess}", source="locomo",
                              provenance={"dia_id": dia, "conversation": cid})
                n_turns += 1
        res["turns"], res["remember_seconds"] = n_turns, round(time.time() - t, 1)
        for cid in ids:
            for qa in convs[cid].get("qa", []):
                ev = set(qa.get("evidence") or [])
                if not ev:
                    continue
                t = time.time()
                got = home.recall(qa["question"], max(ks))
                latencies.append(time.time() - t)
                got = [e for e in got if e.provenance.get("conversation") == cid] or got
                dias = [e.provenance.get("dia_id") for e in got]
                for k in ks:
                    r = len(ev & set(dias[:k])) / len(ev)
                    (hits5 if qa.get("category") == 5 else hits)[k].append(r)
                if qa.get("category") != 5 and "answer" in qa:
                    qa_pool.append((qa, [e.text for e in got[:5]]))
        for k in ks:
            res[f"recall@{k}"] = round(sum(hits[k]) / max(len(hits[k]), 1), 3)
            res[f"recall@{k}_cat5"] = round(sum(hits5[k]) / max(len(hits5[k]), 1), 3) if hits5[k] else None
        res["questions"] = len(hits[ks[0]])
        lat = sorted(latencies)
        res["recall_latency_ms_p50"] = round(1000 * lat[len(lat) // 2], 1) if lat else None
        res["recall_latency_ms_p99"] = round(1000 * lat[int(len(lat) * 0.99)], 1) if lat else None
        if answer_sample:
            rng = random.Random(0)
            sample = rng.sample(qa_pool, min(answer_sample, len(qa_pool)))
            live = home.engine.live
            questions = [q["question"] for q, _ in sample]
            rag = gen.answers(live.model, live.tok, questions, memories=[m for _, m in sample], batch_size=8)
            cb = gen.answers(live.model, live.tok, questions, batch_size=8)
            res["answer_f1_retrieval"] = round(sum(f1(a, str(q["answer"])) for a, (q, _) in zip(rag, sample)) / len(sample), 3)
            res["answer_f1_closed_book"] = round(sum(f1(a, str(q["answer"])) for a, (q, _) in zip(cb, sample)) / len(sample), 3)
            res["answer_sample"] = len(sample)
    say(f"locomo: recall@{ks[0]} {res[f'recall@{ks[0]}']}, recall@{ks[-1]} {res[f'recall@{ks[-1]}']} over "
        f"{res['questions']} questions; answer F1 retrieval {res.get('answer_f1_retrieval')} vs closed-book "
        f"{res.get('answer_f1_closed_book')}")
    if sleep_sessions and ids:
        res["sleep"] = sleep_variant(out_dir / "sleep-home", convs[ids[0]], ids[0], sleep_sessions,
                                     sleep_episodes_cap, say=say, progress=progress)
    return res


SLEEP_K = 5  # turns in the prompt for retrieval only and both, as in the retrieval sample
GATE_KEYS = ("recall_before", "recall_after", "recall_gain", "retention", "drift_kl", "seed_steps", "dreams_kept")
VARIANTS = ("retrieval only", "weights only", "both", "base closed-book")


def _f1(live: Any, qs: list[dict], memories: list[list[str]] | None = None) -> float | None:
    """Mean answer token-F1 with the retrieval sample's prompts and lengths (greedy)."""
    if not qs:
        return None
    out = gen.answers(live.model, live.tok, [q["question"] for q in qs], memories=memories, batch_size=8)
    return round(sum(f1(a, str(q["answer"])) for a, q in zip(out, qs)) / len(qs), 3)


def _sleep_session(home: Home, conv: dict[str, Any], cid: str, sess: str, cap: int,
                   progress) -> tuple[dict[str, Any], list[str]]:
    """Remember one session's turns (the first `cap`), sleep once; the sleep's record and the dia_ids remembered.

    The sleep takes every waiting episode: a rejected sleep's turns wait and the next one retakes them (as in
    the product, oldest first), so each session's turns are in some sleep, and a sleep after a rejection is larger."""
    all_turns = session_turns(conv, sess)
    kept = all_turns[:cap]
    for dia, text in kept:
        home.remember(text, kind="turn", session=f"{cid}:{sess}", source="locomo",
                      provenance={"dia_id": dia, "conversation": cid})
    rec: dict[str, Any] = {"session": sess, "turns": len(all_turns), "remembered": len(kept)}
    dias = [d for d, _ in kept]
    t = time.time()
    try:
        rep = home.sleep(max_episodes=max(len(home.store.list(unconsolidated_only=True)), 1), progress=progress)
    except AgentsleepError as e:  # a failed sleep is a result too; the next session still sleeps
        return {**rec, "status": "failed", "seconds": round(time.time() - t, 1), "reasons": [str(e)]}, dias
    rec.update(status=rep.status, seconds=round(time.time() - t, 1), episodes=len(rep.episodes), version=rep.version,
               excluded=sum(len(v) for v in rep.excluded.values()),
               waiting_after=len(home.store.list(unconsolidated_only=True)))
    rec.update({k: rep.metrics[k] for k in GATE_KEYS if rep.metrics.get(k) is not None})
    if rep.status != "promoted":
        rec["reasons"] = rep.reasons[:2]
    return rec, dias


def slept_questions(conv: dict[str, Any], dias: set[str]) -> tuple[list[dict], int]:
    """QA whose evidence lies wholly in the remembered turns: categories 1-4 with an answer, and the
    category-5 count (adversarial: no answer to score)."""
    inside = [q for q in conv.get("qa", []) if q.get("evidence") and set(q["evidence"]) <= dias]
    scored = [q for q in inside if q.get("category") != 5 and "answer" in q]
    return scored, sum(q.get("category") == 5 for q in inside)


def sleep_variant(root: Path, conv: dict[str, Any], cid: str, n_sessions: int, cap: int, *, say=print,
                  progress=None) -> dict[str, Any]:
    """Sleep the first sessions in order in a home of their own, then score the four variants on one question set."""
    shutil.rmtree(root, ignore_errors=True)
    names = sessions(conv)[:n_sessions]
    out: dict[str, Any] = {"conversation": cid, "sessions": names, "episodes_cap": cap, "k": SLEEP_K, "sleeps": []}
    dias: set[str] = set()
    with Home.open(root) as home:
        base = home.engine.live  # kept: a promotion swaps the engine to a new model object
        for i, sess in enumerate(names, 1):
            rec, kept = _sleep_session(home, conv, cid, sess, cap, progress)
            out["sleeps"].append(rec)
            dias.update(kept)
            say(f"locomo: sleep {i}/{len(names)} ({sess}, {rec.get('episodes', 0)} episodes) {rec['status']} "
                f"in {rec['seconds']} s")
        out["capped"] = [r["session"] for r in out["sleeps"] if r["remembered"] < r["turns"]]
        qs, out["questions_cat5"] = slept_questions(conv, dias)
        out["questions"] = len(qs)
        mems = [[e.text for e in home.recall(q["question"], SLEEP_K)] for q in qs]
        slept = home.engine.live
        out["version"] = slept.version.name
        out["f1"] = dict(zip(VARIANTS, (_f1(base, qs, mems), _f1(slept, qs), _f1(slept, qs, mems), _f1(base, qs))))
    say(f"locomo: {len(qs)} questions in {len(names)} slept sessions; answer F1 "
        + ", ".join(f"{k} {v}" for k, v in out["f1"].items()))
    return out


def markdown(res: dict[str, Any], docs_dir: Path | None = None) -> str:
    if "skipped" in res:
        return f"Skipped: {res['skipped']}."
    ks = res["k"]
    rows = [(f"evidence recall@{k} (categories 1-4)", res[f"recall@{k}"]) for k in ks]
    rows += [(f"evidence recall@{k} (category 5, adversarial)", res[f"recall@{k}_cat5"]) for k in ks]
    rows += [("answer token-F1, retrieval (top-5 turns in context)", res.get("answer_f1_retrieval")),
             ("answer token-F1, closed-book base model", res.get("answer_f1_closed_book")),
             ("recall latency p50 / p99 (ms)", f"{res['recall_latency_ms_p50']} / {res['recall_latency_ms_p99']}"),
             ("turns remembered / seconds", f"{res['turns']} / {res['remember_seconds']}")]
    body = "\n".join(f"| {a} | {b} |" for a, b in rows)
    return (f"Conversations {', '.join(res['conversations'])}; {res['questions']} questions with evidence; "
            f"answer F1 on a sample of {res.get('answer_sample')}.\n\n| measure | value |\n|---|---|\n{body}\n"
            + (sleep_markdown(res["sleep"]) if "sleep" in res else ""))


def _sleep_line(i: int, r: dict[str, Any]) -> str:
    gate = (f"; gate probe recall {r['recall_before']} -> {r['recall_after']}, drift KL {r.get('drift_kl')}"
            if "recall_after" in r else "")
    why = f" ({'; '.join(r['reasons'])})" if r.get("reasons") else ""
    return f"- sleep {i} ({r['session']}, {r.get('episodes', 0)} episodes): {r['status']}, {r['seconds']} s{gate}{why}"


def sleep_markdown(s: dict[str, Any]) -> str:
    """The weights-vs-retrieval table and one line per sleep."""
    rows = "\n".join(f"| {k} | {'-' if v is None else v} | {s['questions']} |" for k, v in s["f1"].items())
    capped = (f" Turns per session capped at {s['episodes_cap']}: {', '.join(s['capped'])} only partly remembered."
              if s.get("capped") else "")
    lines = "\n".join(_sleep_line(i, r) for i, r in enumerate(s["sleeps"], 1))
    return (f"\nWeights vs retrieval: conversation {s['conversation']}, {', '.join(s['sessions'])} remembered and "
            f"slept in order in a home of their own (one sleep per session, serving {s.get('version')} after). "
            f"{s['questions']} questions (categories 1-4) whose evidence lies in those turns; "
            f"{s['questions_cat5']} category-5 questions there are not scored. Retrieval = the top-{s['k']} of the "
            f"slept turns in the prompt; greedy answers.{capped}\n\n"
            f"| variant | answer token-F1 | questions |\n|---|---|---|\n{rows}\n\n{lines}\n")
