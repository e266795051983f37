"""LoCoMo long-term conversational memory (locomo_dev.json under $AGENTSLEEP_BENCH_DATA).

Each turn of a conversation is remembered as an episode (kind "turn", session
id, speaker and date as metadata, dia_id in provenance; the old protocol folds
speaker and date into the text). Measured:
- retrieval recall@k of the evidence turns (all QA, category 5 separately);
- answer token-F1 with retrieval (top-k turns in the prompt) on a sample;
- weights only vs retrieval vs both (`sleep_sessions` > 0): the first N sessions
  of the first conversation are remembered in a home of their own (speaker and
  date as metadata, so the sleep reads whose "I" each turn is) and slept in
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
from datetime import datetime, timezone
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


def parse_date(value: str) -> datetime | None:
    """A LoCoMo session date ("1:56 pm on 8 May, 2023", or "8 May 2023") as UTC, or None."""
    v = " ".join(str(value).replace(",", " ").split())
    for fmt in ("%I:%M %p on %d %B %Y", "%I:%M %p on %d %b %Y", "%d %B %Y", "%d %b %Y", "%B %d %Y", "%Y-%m-%d"):
        try:
            return datetime.strptime(v, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def turn_records(conv: dict[str, Any]) -> list[dict[str, Any]]:
    """Every turn as the standard protocol stores it: the words said (a shared photo's caption kept as
    "[shares ...]", as LoCoMo's own RAG baselines read it), the speaker and session date as metadata."""
    out = []
    for sess in sessions(conv):
        when = parse_date(conv.get(f"{sess}_date_time", ""))
        for t in conv[sess]:
            text = str(t.get("text", "")).strip()
            if t.get("blip_caption"):
                text = f"{text} [shares {t['blip_caption']}]".strip()
            if text:
                out.append({"dia_id": t["dia_id"], "session": sess, "speaker": t.get("speaker"), "when": when,
                            "text": text})
    return out


KS = (1, 5, 10, 20)


def _score(qas: list[tuple[str, dict]], recall_fn, ks) -> tuple[dict[str, Any], list[float]]:
    """recall@k of the evidence dia_ids per category group, and the recall latencies."""
    groups: dict[str, dict[int, list[float]]] = {g: {k: [] for k in ks} for g in ("1-4", "5", "1", "2", "3", "4")}
    lat = []
    for cid, qa in qas:
        ev = set(qa.get("evidence") or [])
        t = time.perf_counter()
        dias = recall_fn(cid, qa["question"], max(ks))
        lat.append(time.perf_counter() - t)
        cat = str(qa.get("category"))
        for k in ks:
            r = len(ev & set(dias[:k])) / len(ev)
            groups["5" if cat == "5" else "1-4"][k].append(r)
            if cat in groups and cat != "5":
                groups[cat][k].append(r)
    out = {g: {k: round(sum(v) / len(v), 3) for k, v in byk.items()} if byk[ks[0]] else None
           for g, byk in groups.items()}
    out["questions"] = {g: len(byk[ks[0]]) for g, byk in groups.items()}
    return out, lat


SESSION_K, SESSION_DEPTH = 10, 200  # sessions counted; turns read to find them


def session_recall(evidence: set[str], ranked_dias: list[str], k: int = SESSION_K) -> float:
    """The session-level measure published LoCoMo retrieval figures use (e.g. MemPalace's benchmark,
    whose documents are whole sessions): the share of a question's evidence sessions ("D3" of "D3:5")
    among the first k distinct sessions of the ranking. Easier than turn level: 10 sessions are a
    third to a half of a conversation."""
    sess = [d.split(":")[0] for d in ranked_dias if d]
    top = set(list(dict.fromkeys(sess))[:k])
    want = {d.split(":")[0] for d in evidence}
    return len(want & top) / len(want) if want else 0.0


def _session_scores(qas: list[tuple[str, dict]], recall_fn) -> dict[str, Any]:
    """session_recall@SESSION_K over all categories (as published) and over categories 1-4."""
    allq, core = [], []
    for cid, qa in qas:
        r = session_recall(set(qa["evidence"]), recall_fn(cid, qa["question"], SESSION_DEPTH))
        allq.append(r)
        if str(qa.get("category")) != "5":
            core.append(r)
    return {"k": SESSION_K, "all": round(sum(allq) / len(allq), 3) if allq else None,
            "1-4": round(sum(core) / len(core), 3) if core else None}


def _pct(lat: list[float], q: float) -> float | None:
    lat = sorted(lat)
    return round(1000 * lat[min(len(lat) - 1, int(len(lat) * q))], 1) if lat else None


def run(out_dir: Path, *, conversations: int | None = None, ks=KS, answer_sample: int = 40, say=print,
        data: Path | None = None, progress=None, sleep_sessions: int = 2,
        sleep_episodes_cap: int = 64, offset: int = 0, count: int | None = None, retrieval_only: bool = False,
        legacy: bool = True, memory: dict[str, Any] | None = None) -> dict[str, Any]:
    """LoCoMo's standard protocol: each conversation in a namespace of its own (one home), every turn
    an episode with its speaker and session date; recall@k of the evidence turns per category group.

    `offset` / `count` (or `conversations`, the old name for count) pick conversations in file order;
    `legacy` also measures the old protocol (all conversations in one partition, the date and speaker
    folded into the text, dense only) for comparison; `retrieval_only` skips the answer sample and the
    sleeps; `memory` overrides memory.* settings (e.g. {"hybrid": False}) for an ablation."""
    if sleep_sessions < 0 or sleep_episodes_cap < 1:
        raise InputError(f"locomo: sleep_sessions must be >= 0 and sleep_episodes_cap >= 1, "
                         f"got {sleep_sessions} and {sleep_episodes_cap}")
    if retrieval_only:
        answer_sample, sleep_sessions = 0, 0
    src = find_data(data)
    if src is None:
        say("locomo: locomo_dev.json not found (set AGENTSLEEP_BENCH_DATA to the folder holding it); skipped")
        return {"skipped": "dataset not found"}
    convs = _load(src)
    if isinstance(convs, str):
        say(f"locomo: {convs}; skipped")
        return {"skipped": convs}
    n = count if count is not None else conversations
    ids = list(convs)[offset:offset + n if n is not None else None]
    if not ids:
        raise InputError(f"locomo: no conversations at offset {offset} (the file holds {len(convs)})")
    ks = tuple(sorted(set(ks)))
    root = out_dir / "home"
    shutil.rmtree(root, ignore_errors=True)
    res: dict[str, Any] = {"conversations": ids, "k": list(ks), "protocol": "namespace per conversation"}
    qas = [(cid, qa) for cid in ids for qa in convs[cid].get("qa", []) if qa.get("evidence") and qa.get("question")]
    qa_pool = []
    with Home.open(root) as home:
        for key, value in (memory or {}).items():
            setattr(home.config.memory, key, value)
        t = time.time()
        n_turns = 0
        last: dict[str, datetime | None] = {}
        items = []
        for cid in ids:
            for r in turn_records(convs[cid]):
                items.append(dict(text=r["text"], kind="turn", session=f"{cid}:{r['session']}", source="locomo",
                                  provenance={"dia_id": r["dia_id"], "conversation": cid}, namespace=f"locomo:{cid}",
                                  event_time=r["when"], speaker=r["speaker"]))
                last[cid] = r["when"] or last.get(cid)
        home.remember_many(items)  # one batch: the same episodes as one remember per turn, minutes faster
        n_turns = len(items)
        res["turns"], res["remember_seconds"] = n_turns, round(time.time() - t, 1)

        def recall_ns(cid: str, question: str, k: int) -> list[str]:
            got = home.recall(question, k, namespace=f"locomo:{cid}", now=last.get(cid))
            return [e.provenance.get("dia_id") for e in got]

        scores, lat = _score(qas, recall_ns, ks)
        res["by_category"] = scores
        for k in ks:
            res[f"recall@{k}"] = scores["1-4"][k] if scores["1-4"] else None
            res[f"recall@{k}_cat5"] = scores["5"][k] if scores["5"] else None
        res["questions"] = scores["questions"]["1-4"]
        res["questions_cat5"] = scores["questions"]["5"]
        res["recall_latency_ms_p50"], res["recall_latency_ms_p99"] = _pct(lat, 0.5), _pct(lat, 0.99)
        res["session_recall"] = _session_scores(qas, recall_ns)
        if answer_sample:
            for cid, qa in qas:
                if qa.get("category") != 5 and "answer" in qa:
                    qa_pool.append((qa, [e.prompt_text() for e in
                                         home.recall(qa["question"], 5, namespace=f"locomo:{cid}", now=last.get(cid))]))
            rng = random.Random(0)
            sample = rng.sample(qa_pool, min(answer_sample, len(qa_pool)))
            live = home.engine.live
            questions = [q["question"] for q, _ in sample]
            rag = gen.answers(live.model, live.tok, questions, memories=[m for _, m in sample], batch_size=8)
            cb = gen.answers(live.model, live.tok, questions, batch_size=8)
            res["answer_f1_retrieval"] = round(sum(f1(a, str(q["answer"])) for a, (q, _) in zip(rag, sample)) / len(sample), 3)
            res["answer_f1_closed_book"] = round(sum(f1(a, str(q["answer"])) for a, (q, _) in zip(cb, sample)) / len(sample), 3)
            res["answer_sample"] = len(sample)
    say(f"locomo: recall@{', @'.join(map(str, ks))} (categories 1-4) "
        f"{', '.join(str(res[f'recall@{k}']) for k in ks)} over {res['questions']} questions")
    if legacy:
        res["legacy"] = legacy_protocol(out_dir / "legacy-home", convs, ids, qas, ks)
        say(f"locomo: old protocol (one partition, dense only) recall@{ks[-2] if len(ks) > 1 else ks[0]} "
            f"{res['legacy'][f'recall@{ks[-2] if len(ks) > 1 else ks[0]}']}")
    if sleep_sessions and ids:
        res["sleep"] = sleep_variant(out_dir / "sleep-home", convs[ids[0]], ids[0], sleep_sessions,
                                     sleep_episodes_cap, say=say, progress=progress)
    return res


def legacy_protocol(root: Path, convs: dict[str, Any], ids: list[str], qas: list[tuple[str, dict]],
                    ks) -> dict[str, Any]:
    """The protocol before namespaces: every conversation in one partition, "[date] speaker: text" as the
    episode, dense recall only; of the top k, only the question's own conversation's hits count (dia ids
    such as "D1:3" repeat in every conversation: another's turn is a miss, never a match)."""
    shutil.rmtree(root, ignore_errors=True)
    with Home.open(root) as home:
        home.config.memory.hybrid = False
        home.config.memory.speaker_boost = 0.0
        home.config.memory.time_boost = 0.0
        home.remember_many([dict(text=text, kind="turn", session=f"{cid}:{sess}", source="locomo",
                                 provenance={"dia_id": dia, "conversation": cid})
                            for cid in ids for dia, sess, text in turns(convs[cid])])

        def recall_one(cid: str, question: str, k: int) -> list[str]:
            got = home.recall(question, k)
            got = [e for e in got if e.provenance.get("conversation") == cid]
            return [e.provenance.get("dia_id") for e in got]

        scores, lat = _score(qas, recall_one, ks)
    out: dict[str, Any] = {f"recall@{k}": scores["1-4"][k] if scores["1-4"] else None for k in ks}
    out.update({f"recall@{k}_cat5": scores["5"][k] if scores["5"] else None for k in ks})
    out["recall_latency_ms_p50"] = _pct(lat, 0.5)
    return out


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
    all_turns = [r for r in turn_records(conv) if r["session"] == sess]
    kept = all_turns[:cap]
    for r in kept:  # as the standard protocol stores them: the sleep reads "On 8 May 2023, Caroline went ..."
        home.remember(r["text"], kind="turn", session=f"{cid}:{sess}", source="locomo", speaker=r["speaker"],
                      event_time=r["when"], provenance={"dia_id": r["dia_id"], "conversation": cid})
    rec: dict[str, Any] = {"session": sess, "turns": len(all_turns), "remembered": len(kept)}
    dias = [r["dia_id"] for r in kept]
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
        mems = [[e.prompt_text() for e in home.recall(q["question"], SLEEP_K)] for q in qs]  # dated, with the speaker
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
    cats = res.get("by_category") or {}
    for c in ("1", "2", "3", "4"):
        if cats.get(c):
            rows.append((f"category {c} recall@{'/'.join(map(str, ks))} ({cats['questions'][c]} questions)",
                         " / ".join(str(cats[c][k] if k in cats[c] else cats[c].get(str(k))) for k in ks)))
    sr = res.get("session_recall")
    if sr:
        rows.append((f"session-level recall@{sr['k']}, all categories / categories 1-4 (the unit published LoCoMo "
                     f"retrieval figures count: evidence sessions among the first {sr['k']} distinct sessions retrieved)",
                     f"{sr['all']} / {sr['1-4']}"))
    leg = res.get("legacy")
    if leg:
        rows.append((f"old protocol (one partition, date and speaker in the text, dense only) recall@{'/'.join(map(str, ks))}",
                     " / ".join(str(leg.get(f"recall@{k}")) for k in ks)))
    if "answer_f1_retrieval" in res:
        rows += [("answer token-F1, retrieval (top-5 turns in context)", res.get("answer_f1_retrieval")),
                 ("answer token-F1, closed-book base model", res.get("answer_f1_closed_book"))]
    rows += [("recall latency p50 / p99 (ms)", f"{res['recall_latency_ms_p50']} / {res['recall_latency_ms_p99']}"),
             ("turns remembered / seconds", f"{res['turns']} / {res['remember_seconds']}")]
    body = "\n".join(f"| {a} | {b} |" for a, b in rows)
    proto = (" Each conversation in a namespace of its own; speaker and session date stored as metadata."
             if res.get("protocol") else "")
    sample = f"; answer F1 on a sample of {res.get('answer_sample')}" if res.get("answer_sample") else ""
    return (f"Conversations {', '.join(res['conversations'])}; {res['questions']} questions with evidence"
            f"{sample}.{proto}\n\n| measure | value |\n|---|---|\n{body}\n"
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
