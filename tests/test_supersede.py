"""Updated facts: a newer episode that states another value supersedes the consolidated one (real Chroma, MiniLM)."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from agentsleep.config import Config
from agentsleep.home import Home
from agentsleep.memory.embedder import MiniLMEmbedding
from agentsleep.memory.supersede import contradicts, superseded
from agentsleep.sleep.select import select
from cli_helpers import run_cli
from tiny import grounded_writer, tiny_model_dir

# Written for this test (not the benchmark's facts): (earlier, newer, does the newer change the earlier's value)
PAIRS = [
    ("I live in Porto.", "We moved from Porto to Lisbon last month.", True),
    ("My favourite drink is espresso.", "My favourite drink is green tea these days.", True),
    ("I work as a nurse at the city hospital.", "I left nursing and now work as a teacher.", True),
    ("My gym is FitZone on Main Street.", "I cancelled FitZone; my gym is now Peak Athletics.", True),
    ("Our car is a grey Honda Civic.", "We sold the Civic and our car is a Kia Niro now.", True),
    ("My phone number ends in 4410.", "I got a new phone number ending in 8823.", True),
    ("I go swimming on Tuesday mornings.", "I go swimming on Friday mornings now.", True),
    ("My boss is called Henrietta.", "Henrietta left, and my boss is now called Raymond.", True),
    ("My dog weighs 12 kilos.", "My dog weighs 15 kilos now.", True),
    ("I am vegetarian.", "I started eating fish again, so I am pescatarian now.", True),
    ("I bank with Carrow Savings.", "I moved my savings from Carrow to Westfield Bank.", True),
    ("I live in Porto.", "My sister lives in Lisbon.", False),
    ("I live in Porto.", "I live in Porto, near the river.", False),
    ("My favourite drink is espresso.", "My favourite food is lasagne.", False),
    ("I go swimming on Tuesday mornings.", "I play squash on Thursday evenings.", False),
    ("My boss is called Henrietta.", "My boss Henrietta likes early meetings.", False),
    ("Our car is a grey Honda Civic.", "Our neighbour's car is a red Ford.", False),
    ("I work as a nurse at the city hospital.", "My husband works as a chef.", False),
    ("My dog weighs 12 kilos.", "My cat weighs 4 kilos.", False),
    ("I am vegetarian.", "I am allergic to walnuts.", False),
    ("My gym is FitZone on Main Street.", "The bakery on Main Street sells rye bread.", False),
    ("My phone number ends in 4410.", "My office extension is 212.", False),
    ("I have two brothers.", "My brothers both live in Leeds.", False),
    ("I live in Porto.", "I visited my sister in Lisbon.", False),
    ("I bank with Carrow Savings.", "My brother switched his bank to Carrow.", False),
    ("I live in Porto.", "My sister moved from Porto to Lisbon.", False),
]


def test_detection_precision_on_written_pairs():
    emb = MiniLMEmbedding()
    vecs = np.array(emb([t for o, n, _ in PAIRS for t in (o, n)]))
    said = [contradicts(o, n, float(vecs[2 * i] @ vecs[2 * i + 1])) for i, (o, n, _) in enumerate(PAIRS)]
    truth = [y for _, _, y in PAIRS]
    tp = sum(s and y for s, y in zip(said, truth))
    precision, recall = tp / max(sum(said), 1), tp / sum(truth)
    print(f"supersede rule: precision {precision:.2f}, recall {recall:.2f} on {len(PAIRS)} pairs")
    assert precision >= 0.9 and recall >= 0.7, (precision, recall)
    assert not contradicts("I live in Porto.", "We moved to Lisbon.", 0.2)  # far apart: never
    # a move the speaker made; not someone else's, not denied, not asked about
    assert contradicts("I bank with Carrow Savings.", "I moved my savings from the Carrow account to Westfield.", 0.7)
    assert contradicts("I live in Porto.", "Last year we moved to Lisbon from Porto.", 0.7)
    for said in ("My brother moved his savings from Carrow to Westfield.", "Should I have moved my savings from Carrow?"):
        assert not contradicts("I bank with Carrow Savings.", said, 0.7), said


# A change denied (every verb of changing negated right before it) is no update; a negation elsewhere is not a denial
DENIALS = [
    ("I bank with Carrow Savings.", "I never moved my savings from Carrow.", False),
    ("I bank with Carrow Savings.", "I didn't switch banks, I'm still with Carrow.", False),
    ("I bank with Carrow Savings.", "I haven’t changed my bank in years.", False),
    ("I bank with Carrow Savings.", "I'm not switching banks.", False),
    ("I bank with Carrow Savings.", "I never left Carrow; I just don't use the app anymore.", False),
    ("I live in Porto.", "We're not moving to Lisbon after all.", False),
    ("I bank with Carrow Savings.", "I did not like Carrow so I switched my savings to Westfield.", True),
    ("I bank with Carrow Savings.", "I don't bank with Carrow any more; I'm with Westfield now.", True),
    ("I bank with Carrow Savings.", "I was not happy so switched to Westfield.", True),
    ("I live in Porto.", "I can't believe we moved to Lisbon!", True),
    ("I live in Porto.", "We moved to Lisbon and I'll never leave.", True),
    ("I live in Porto.", "The kids didn't want to leave, but we moved to Lisbon.", True),
    ("I live in Porto.", "I used to live in Porto, but now I live in Lisbon.", True),
]


@pytest.mark.parametrize("old,new,update", DENIALS)
def test_a_denied_change_is_no_update_and_other_negations_are_not_denials(old, new, update):
    assert contradicts(old, new, 0.7) == update


def test_readers_never_create_the_table(tmp_path):
    import sqlite3

    from agentsleep.memory.ledger import Ledger

    led = Ledger(tmp_path / "ledger.sqlite")
    assert superseded(led.path) == {}
    with sqlite3.connect(led.path) as c:  # a read-only home's reader wrote nothing
        assert not c.execute("SELECT name FROM sqlite_master WHERE name = 'superseded'").fetchall()


@pytest.fixture()
def home(tmp_path):
    cfg = Config.model_validate({"model": {"base": str(tiny_model_dir(tmp_path / "models"))}})
    Home.init(tmp_path / "home", config=cfg)
    with Home.open(tmp_path / "home") as h:
        yield h


def _consolidate(h: Home, ids: list[str]) -> None:
    h.store.ledger.mark(ids, h.registry.current_name(), "s-test")


def test_newer_value_supersedes_leaves_rehearsal_stays_recallable(home):
    from agentsleep.memory.supersede import detect

    old = home.remember("I live in Porto.").id
    other = home.remember("My dog weighs 12 kilos.").id
    _consolidate(home, [old, other])
    assert {m.id for m in select(home).replay} == {old, other}
    new = home.remember("We moved from Porto to Lisbon last month.").id
    unrelated = home.remember("My sister lives in Lisbon.").id
    found = detect(home.store, home.store.list(unconsolidated_only=True))
    assert [(o, n) for o, n, _ in found] == [(old, new)]
    assert detect(home.store, home.store.list(unconsolidated_only=True)) == []  # recorded once
    assert home.get(old).superseded_by == new and home.get(unrelated).superseded_by is None
    hit = [e for e in home.recall("Where do I live?", 5) if e.id == old]
    assert hit and hit[0].superseded_by == new                 # still recallable, marked
    assert home.status()["superseded"] == {old: new}
    plan = select(home)
    assert {m.id for m in plan.replay} == {other}              # the stale value is not rehearsed
    assert {m.id for m in plan.memories} == {new, unrelated}
    rows = run_cli("recall", "Where do I live?", "--json", home=home.root).json()
    assert {r["id"]: r.get("superseded_by") for r in rows}[old] == new
    assert run_cli("status", "--json", home=home.root).json()["superseded"] == {old: new}


def test_an_update_told_before_the_same_sleep_holds_the_old_value_back(home):
    """Both values arrive before one sleep: the older is superseded all the same, and held back from
    consolidation (a night never trains both), while it stays in the store and in recall."""
    from agentsleep.memory.supersede import detect

    old = home.remember("I live in Porto.").id
    other = home.remember("My dog weighs 12 kilos.").id
    new = home.remember("We moved from Porto to Lisbon last month.").id
    found = detect(home.store, home.store.list(unconsolidated_only=True))
    assert [(o, n) for o, n, _ in found] == [(old, new)]
    plan = select(home)
    assert {m.id for m in plan.memories} == {other, new}
    assert plan.excluded == {"superseded": [old]} and "superseded 1" in plan.excluded_note()
    assert home.get(old).consolidated_in is None and old in [e.id for e in home.recall("Where do I live?", 5)]


def test_forget_either_episode_is_exact(home):
    from agentsleep.memory.supersede import detect

    old = home.remember("My favourite drink is espresso.").id
    _consolidate(home, [old])
    new = home.remember("My favourite drink is green tea these days.").id
    detect(home.store, home.store.list(unconsolidated_only=True))
    assert superseded(home.store.ledger.path) == {old: new}
    home.forget(new)                                            # the update is forgotten: the old value is current again
    assert superseded(home.store.ledger.path) == {} and home.get(old).superseded_by is None
    assert old in {m.id for m in select(home).replay}
    newer = home.remember("My favourite drink is green tea these days.").id
    detect(home.store, home.store.list(unconsolidated_only=True))
    assert superseded(home.store.ledger.path) == {old: newer}
    home.forget(old)                                            # the superseded one is forgotten: no record names it
    assert superseded(home.store.ledger.path) == {}
    with pytest.raises(Exception, match="no episode"):
        home.get(old)
    assert home.get(newer).superseded_by is None


def test_restated_questions_take_the_new_value_only():
    from agentsleep.sleep.dream import new_values, pick_restated, restate_options
    from agentsleep.sleep.types import Dream

    old, new = "The user drives a red Mazda.", "The user sold the Mazda and drives a white Toyota now."
    assert new_values(new, old) == ["Toyota"]                  # the old value and "now" are not new values
    views, old_views = {"ep-new": new}, {"ep-old": old}
    asked = [("ep-new", Dream("ep-old", "What car do I drive?", "Mazda")),
             ("ep-new", Dream("ep-old", "Which brand is my car?", "Mazda")),
             ("ep-new", Dream("ep-old", "What car do I drive?", "Mazda"))]
    answers = ["A white Toyota.", "You drive a Mazda", "It is purple"]
    options = restate_options(asked, answers, views, old_views)
    # the teacher's answer joins when grounded in the new note; one giving the old value or unsupported does not
    assert options == [["Toyota", "A white Toyota"], ["Toyota"], ["Toyota"]]
    # grounded in the new note, worded unlike the old answer, and still the old value: not an update
    said = [("ep-new", Dream("ep-old", "What's my car?", "The user drives a red Mazda"))]
    assert restate_options(said, ["The user drives a Mazda"], views, old_views) == [["Toyota"]]
    got = pick_restated(asked, options, [[0.9, 0.4], [0.5], [0.1]])
    assert [(d.episode_id, d.question, d.answer, d.kind) for d in got] == [
        ("ep-new", "What car do I drive?", "A white Toyota", "update"),  # the likelier; the repeated question once
        ("ep-new", "Which brand is my car?", "Toyota", "update")]



def test_an_updates_own_dreams_never_give_the_old_value():
    from agentsleep.sleep.dream import stale_answer

    old, new = "The user banks with Carrow Savings.", "The user moved the user's savings from Carrow to Westfield Bank."
    # the 135M teacher reading "moved ... from Carrow to Westfield" answers "where to?" with the old bank
    assert stale_answer("Carrow", old, new) and stale_answer("Carrow Savings", old, new)
    assert not stale_answer("Westfield Bank", old, new) and not stale_answer("from Carrow to Westfield Bank", old, new)
    assert not stale_answer("the user", old, new) and not stale_answer("the", old, new)  # what both notes say
    # what the update kept is no old value: the hospital, and a city the user returns to
    old, new = "The user works as a nurse at the city hospital.", "The user left nursing and now teaches at the city hospital."
    assert stale_answer("nurse", old, new) and not stale_answer("city hospital", old, new)
    old, new = "The user lives in Porto and used to live in Lisbon.", "The user moved back from Porto to Lisbon."
    assert stale_answer("Porto", old, new) and not stale_answer("Lisbon", old, new)


def test_an_updates_blank_probes_never_ask_for_the_old_value():
    from types import SimpleNamespace

    from agentsleep.sleep.evidence import _current
    from agentsleep.sleep.types import Probe

    night = SimpleNamespace(updates={"new": {"old": "The user parks on level 3 of the garage."}})
    texts = {"new": "The user moved the user's parking from level 3 to level 5.", "other": "The user parks on level 3."}
    blanks = [Probe("new", "... from ___ to level 5", "level 3", "cloze"), Probe("new", "... to ___", "level 5", "cloze"),
              Probe("other", "... on ___ of the garage", "level 3", "cloze")]
    assert [(p.episode_id, p.answer) for p in _current(night, blanks, texts)] == [("new", "level 5"), ("other", "level 3")]


def test_the_sleep_after_an_update_trains_the_old_questions_with_the_new_value(tmp_path, monkeypatch):
    """Two real sleeps on the tiny model (the gate opened: what is checked is what the update night
    trains): the second detects the update, rehearses nothing of the old episode, and trains its
    questions with the new value; the old episode stays consolidated in the first version."""
    import json

    monkeypatch.setattr("agentsleep.sleep.dream.write", functools.partial(grounded_writer, view=True))
    cfg = Config.model_validate({"model": {"base": str(tiny_model_dir(tmp_path / "models"))}, "sleep": {
        "seed": {"replay_prompts": 2, "epochs": 1, "min_steps": 1}, "rest": {"rounds": 0},
        "dream": {"per_episode": 3, "teacher_agreement": False},
        "gate": {"drift_prompts": 2, "min_recall_gain": -1.0, "max_drift_kl": 1000, "max_base_drift_kl": 1000,
                 "min_retention": 0.0, "loss_allowance": 1000, "min_probes": 0}}})
    with Home.open(Home.init(tmp_path / "home", config=cfg)) as h:
        old = h.remember("I live in Porto.").id
        first = h.sleep()
        assert first.status == "promoted", first.reasons
        new = h.remember("Last month we moved to Lisbon from Porto.").id
        second = h.sleep()
        assert second.status == "promoted", second.reasons
        assert any(f"{new} supersedes {old}" in r for r in second.reasons), second.reasons
        man = h.registry.get(second.version).manifest
        assert old not in man["replay_ids"] and man["episode_ids"] == [new]
        dreams = [json.loads(x) for x in (h.root / "sleeps" / second.sleep_id / "dreams.jsonl").read_text().splitlines()]
        update = [(d["episode_id"], d["question"], d["answer"]) for d in dreams if d["kind"] == "update"]
        before = [json.loads(x) for x in (h.root / "sleeps" / first.sleep_id / "dreams.jsonl").read_text().splitlines()]
        asked = {d["question"] for d in before if d["episode_id"] == old and not d["held_out"]}
        # each of the old episode's trained questions once, now with the new value (the old answers: Porto, user)
        assert update and {q for _, q, _ in update} >= asked and {e for e, _, _ in update} == {new}
        assert {a for _, _, a in update} == {"Lisbon"} and len(update) == len({q for _, q, _ in update})
        assert h.get(old).superseded_by == new and h.get(old).consolidated_in == first.version
        # the update's own dream that answers with the old value (its last word, "Porto") is dropped before
        # anything learns from it; its second word stays
        own = {d["answer"] for d in dreams if d["episode_id"] == new and d["kind"] != "update"}
        assert own == {"month"}, own
        dropped = json.loads((h.root / "sleeps" / second.sleep_id / "report.json").read_text())["dreams"]["dropped"]
        assert dropped.get("stale", 0) >= 1, dropped
