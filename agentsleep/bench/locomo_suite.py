"""LoCoMo long-term conversational memory (../shared/data/locomo_dev.json).

Each turn of a conversation is remembered as an episode (kind "turn", session
id, speaker and date in the text, dia_id in provenance). Measured:
- retrieval recall@k of the evidence turns (all QA, category 5 separately);
- answer token-F1 with retrieval (top-k turns in the prompt) on a sample.
The weights-only variant (sleeping the sessions in order) needs one sleep per
session and is left to the --full profile.
"""
from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from ..home import Home
from ..models import generate as gen
from ..textmatch import f1

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "locomo_dev.json"


def find_data(path: Path | None = None) -> Path | None:
    for p in (path, DATA, Path("../shared/data/locomo_dev.json")):
        if p and p.is_file():
            return p
    return None


def turns(conv: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(dia_id, session, text) for every turn, the date and speaker folded into the text."""
    out = []
    n = 1
    while f"session_{n}" in conv:
        date = conv.get(f"session_{n}_date_time", "")
        for t in conv[f"session_{n}"]:
            out.append((t["dia_id"], f"session_{n}", f"[{date}] {t['speaker']}: {t['text']}"))
        n += 1
    return out


def run(out_dir: Path, *, conversations: int = 2, ks=(5, 10), answer_sample: int = 40, say=print,
        data: Path | None = None, progress=None) -> dict[str, Any]:
    src = find_data(data)
    if src is None:
        say("locomo: ../shared/data/locomo_dev.json not found; skipped")
        return {"skipped": "dataset not found"}
    convs = json.loads(src.read_text())
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
            for qa in convs[cid]["qa"]:
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
            prompts_rag = [gen.chat(live.tok, q["question"], system=gen.memory_system(m)) for q, m in sample]
            prompts_cb = [gen.chat(live.tok, q["question"]) for q, _ in sample]
            rag = gen.generate(live.model, live.tok, prompts_rag, max_new_tokens=24, batch_size=8)
            cb = gen.generate(live.model, live.tok, prompts_cb, max_new_tokens=24, batch_size=8)
            res["answer_f1_retrieval"] = round(sum(f1(a, str(q["answer"])) for a, (q, _) in zip(rag, sample)) / len(sample), 3)
            res["answer_f1_closed_book"] = round(sum(f1(a, str(q["answer"])) for a, (q, _) in zip(cb, sample)) / len(sample), 3)
            res["answer_sample"] = len(sample)
    say(f"locomo: recall@{ks[0]} {res[f'recall@{ks[0]}']}, recall@{ks[-1]} {res[f'recall@{ks[-1]}']} over "
        f"{res['questions']} questions; answer F1 retrieval {res.get('answer_f1_retrieval')} vs closed-book "
        f"{res.get('answer_f1_closed_book')}")
    return res


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
            f"answer F1 on a sample of {res.get('answer_sample')}.\n\n| measure | value |\n|---|---|\n{body}\n")
