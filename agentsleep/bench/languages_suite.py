"""`agentsleep bench languages`: a home of facts in four other languages, one in a non-Latin script.

Twenty short facts (Spanish, German, Russian, Japanese; five each, written for this suite, each with
a question in its own language) are remembered and slept on with the home's default config, then a
second sleep runs with nothing new. What is checked is what an agent that hears other languages
needs: no sleep crashes or stalls; after them, every episode is either consolidated or held back
with a reason (set aside, backing off, or excluded by the policy), so none silently waits forever;
and recall finds each fact from its question. Closed-book answers after the sleep are reported too,
for information (the embedded model is English-first; learning them is not what is checked here).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..home import Home
from ..textmatch import contains_answer
from .facts import Fact

FACTS: dict[str, list[Fact]] = {
    "es": [Fact("Mi hermana Lucía vive en Valencia.", "¿Dónde vive mi hermana?", "Valencia"),
           Fact("El código del portal de mi casa es 4471.", "¿Cuál es el código del portal?", "4471"),
           Fact("Mi médico de cabecera es el doctor Ramírez.", "¿Quién es mi médico de cabecera?", "Ramírez"),
           Fact("La reunión con el equipo de ventas es el jueves a las diez.", "¿Qué día es la reunión con ventas?", "jueves"),
           Fact("Mi gato se llama Garbanzo.", "¿Cómo se llama mi gato?", "Garbanzo")],
    "de": [Fact("Mein Zahnarzt heißt Dr. Brückner.", "Wie heißt mein Zahnarzt?", "Brückner"),
           Fact("Unser Büro ist in die Schillerstraße 12 umgezogen.", "Wohin ist unser Büro umgezogen?", "Schillerstraße"),
           Fact("Meine Tochter spielt Geige im Schulorchester.", "Welches Instrument spielt meine Tochter?", "Geige"),
           Fact("Das WLAN-Passwort im Ferienhaus ist Möwe-58.", "Wie lautet das WLAN-Passwort im Ferienhaus?", "Möwe-58"),
           Fact("Ich bin allergisch gegen Haselnüsse.", "Wogegen bin ich allergisch?", "Haselnüsse")],
    "ru": [Fact("Моего начальника зовут Ольга Петровна.", "Как зовут моего начальника?", "Ольга"),
           Fact("Мой рейс в Казань вылетает в 7:40.", "Во сколько вылетает мой рейс в Казань?", "7:40"),
           Fact("Моя машина — серая Лада Веста.", "Какая у меня машина?", "Лада"),
           Fact("Ключ от гаража лежит под синим ведром.", "Где лежит ключ от гаража?", "ведром"),
           Fact("Мой брат Артём живёт в Новосибирске.", "Где живёт мой брат?", "Новосибирске")],
    "ja": [Fact("私の犬の名前はポチです。", "私の犬の名前は何ですか？", "ポチ"),
           Fact("歯医者の予約は金曜日の午後三時です。", "歯医者の予約はいつですか？", "金曜日"),
           Fact("妻の誕生日は五月十二日です。", "妻の誕生日はいつですか？", "五月十二日"),
           Fact("会社の新しい住所は大阪の梅田です。", "会社の新しい住所はどこですか？", "梅田"),
           Fact("私はそばが好きです。", "私の好きな食べ物は何ですか？", "そば")],
}
RECALL_K = 5


def _state(h: Home, episode_id: str, held: dict[str, dict], excluded: dict[str, set[str]]) -> tuple[str, str]:
    """(state, reason): consolidated in a version, set aside or backing off (with the ledger's reason,
    `held`: Home.held_back() by episode), excluded by the policy (with its rule), or waiting with no
    reason (what must never happen)."""
    from ..memory.ledger import SKIPPED

    mark = h.get(episode_id).consolidated_in or ""
    if mark and not mark.startswith(SKIPPED):
        return "consolidated", mark
    if episode_id in held:
        return ("set aside" if mark else "backing off"), held[episode_id]["reason"] or held[episode_id]["state"]
    for why, ids in excluded.items():
        if episode_id in ids:
            return "excluded", why
    return "waiting", ""


def run(out_dir: Path, *, say: Callable[[str], None] = print, progress: Any = None,
        config: Any = None) -> dict[str, Any]:
    """Remember the facts, check recall, sleep twice, account for every episode. `config`: the home's
    Config (default: the defaults, embedded model)."""
    from ..config import Config
    from .report import provenance

    root = out_dir / "home"
    shutil.rmtree(root, ignore_errors=True)
    Home.init(root, config=config or Config())
    facts = [(lang, f) for lang, fs in FACTS.items() for f in fs]
    res: dict[str, Any] = {"facts": len(facts), "languages": list(FACTS), "sleeps": [], "crashed": None}
    with Home.open(root) as h:
        ids = [h.remember(f.text).id for _, f in facts]
        found = []
        for (lang, f), i in zip(facts, ids):
            hits = [e.id for e in h.recall(f.question, RECALL_K)]
            found.append({"lang": lang, "rank": hits.index(i) + 1 if i in hits else None})
        excluded: dict[str, set[str]] = {}
        try:
            for n in (1, 2):  # the second has nothing new: a stall would show as the same batch taken again
                say(f"languages: sleep {n}")
                t = time.time()
                rep = h.sleep(progress=progress)
                for why, xs in (rep.excluded or {}).items():
                    excluded.setdefault(why, set()).update(xs)
                res["sleeps"].append({"status": rep.status, "episodes": len(rep.episodes), "version": rep.version,
                                      "seconds": round(time.time() - t, 1), "reasons": list(rep.reasons)[:6]})
        except Exception as e:  # noqa: BLE001 - what the suite measures: record it, then report
            res["crashed"] = f"{type(e).__name__}: {e}"
        held = {r["episode_id"]: r for r in h.held_back()}
        states = [_state(h, i, held, excluded) for i in ids]
        live = h.engine.live
        from .sleep_suite import closed_book

        _, answers = closed_book(live.model, live.tok, [f for _, f in facts])
    rows = []
    for (lang, f), i, fd, (state, why), a in zip(facts, ids, found, states, answers):
        rows.append({"lang": lang, "id": i, "text": f.text, "state": state, "reason": why, "recall_rank": fd["rank"],
                     "closed_book": contains_answer(a, f.answer), "answer": a[:80]})
    res["episodes"] = rows
    by_lang = {}
    for lang in FACTS:
        mine = [r for r in rows if r["lang"] == lang]
        by_lang[lang] = {"consolidated": sum(r["state"] == "consolidated" for r in mine),
                         "held back with a reason": sum(r["state"] not in ("consolidated", "waiting") for r in mine),
                         "waiting, no reason": sum(r["state"] == "waiting" for r in mine),
                         f"recall@{RECALL_K}": sum(r["recall_rank"] is not None for r in mine) / len(mine),
                         "recall@1": sum(r["recall_rank"] == 1 for r in mine) / len(mine),
                         "closed-book": sum(r["closed_book"] for r in mine) / len(mine), "facts": len(mine)}
    res["by_language"] = by_lang
    second = res["sleeps"][1] if len(res["sleeps"]) > 1 else None
    res["targets"] = {
        "no_crash": {"value": res["crashed"] or "none", "met": res["crashed"] is None},
        "every_episode_consolidated_or_held_back_with_a_reason": {
            "value": sum(r["state"] != "waiting" for r in rows), "target": len(rows),
            "met": all(r["state"] != "waiting" for r in rows)},
        "no_stall": {"value": second["status"] if second else "no second sleep",
                     "met": bool(second) and second["status"] in ("nothing-to-do", "promoted")},
        f"recall_finds_every_fact_at_{RECALL_K}": {"value": sum(r["recall_rank"] is not None for r in rows),
                                                   "target": len(rows),
                                                   "met": all(r["recall_rank"] is not None for r in rows)},
    }
    res.update(provenance())
    return res


def markdown(res: dict[str, Any], docs_dir: Path | None = None) -> str:
    lines = [f"{res['facts']} facts, five each in {', '.join(res['languages'])} (written for this suite, each with a "
             "question in its own language), remembered in one home with the default config; then a sleep, and a "
             "second one with nothing new. Recall asks each fact's question (top "
             f"{RECALL_K} of the 20). Closed-book answers are for information: the embedded model is English-first.",
             "", "| sleep | status | episodes | seconds |", "|---|---|---|---|"]
    for n, s in enumerate(res["sleeps"], 1):
        lines.append(f"| {n} | {s['status']} | {s['episodes']} | {s['seconds']} |")
    lines += ["", f"| language | consolidated | held back with a reason | waiting, no reason | recall@1 | "
              f"recall@{RECALL_K} | closed-book |", "|---|---|---|---|---|---|---|"]
    for lang, b in res["by_language"].items():
        lines.append(f"| {lang} | {b['consolidated']}/{b['facts']} | {b['held back with a reason']} | "
                     f"{b['waiting, no reason']} | {b['recall@1']:.2f} | {b[f'recall@{RECALL_K}']:.2f} | "
                     f"{b['closed-book']:.2f} |")
    held: dict[str, list[str]] = {}
    for r in res["episodes"]:
        if r["state"] != "consolidated":
            held.setdefault(f"{r['state']}: {r['reason'][:120]}", []).append(r["lang"])
    if held:
        lines += ["", "Held back, by reason: " + "; ".join(f"{why} ({len(ls)}: {', '.join(sorted(set(ls)))})"
                                                           for why, ls in held.items())]
    if res.get("crashed"):
        lines += ["", f"**Crashed**: {res['crashed']}"]
    lines += ["", "Targets:"] + [f"- {k}: {v['value']}" + (f" of {v['target']}" if "target" in v else "")
                                 + (": met" if v["met"] else ": NOT met") for k, v in res["targets"].items()]
    return "\n".join(lines)
