"""`bench nights` end to end on a tiny random model: 3 nights of 2 facts (an update on night 3), real sleeps."""
from __future__ import annotations

import json

import pytest

from agentsleep.bench import nights_suite
from agentsleep.bench.night_facts import NIGHTS
from agentsleep.errors import InputError
from tiny import tiny_model_dir


def _config(model: str) -> dict:
    return {"model": {"base": model},
            "sleep": {"dream": {"per_episode": 1, "stems": ["What"], "answer_spans": 0, "max_new_tokens": 8, "batch_size": 8},
                      "seed": {"epochs": 1, "min_steps": 0, "batch_size": 4, "max_seq_len": 96, "replay_prompts": 2,
                               "lora_r": 4, "lora_alpha": 8},
                      "rest": {"rounds": 0}, "gate": {"drift_prompts": 2}}}


def test_schedule_updates_an_earlier_fact_from_night_three():
    plan = nights_suite.schedule(5, 8)
    assert [u is None for _, u in plan] == [True, True, False, False, False]
    targets = [(u.night, u.index) for _, u in plan if u]
    assert len(set(targets)) == 3 and all(t[0] < n for t, n in zip(targets, (2, 3, 4)))
    cur = nights_suite._current(plan, 4)
    u = plan[2][1]
    assert cur[u.night][u.index].answer == u.answer and cur[u.night][u.index].question == NIGHTS[u.night][u.index].question
    with pytest.raises(InputError, match="--nights"):
        nights_suite.schedule(21, 8)
    with pytest.raises(InputError, match="--facts-per-night"):
        nights_suite.schedule(3, 9)


def test_development_nights_are_the_development_facts_in_the_first_person_with_their_own_updates():
    """`--dev` tunes on bench/facts.py, never on the test set: no fact, question or update is shared."""
    from agentsleep.bench.facts import SET_A
    from agentsleep.bench.night_facts import DEV_UPDATES, UPDATES, dev_nights

    dev, test = nights_suite.schedule(7, 8, dev=True), nights_suite.schedule(5, 8)
    told = [f for facts, _ in dev for f in facts]
    assert len(told) == 56 and len({f.question for f in told}) == 56          # no question asked twice
    assert told[0].text == "My daughter is named Maya." and told[0].answer == SET_A[0].answer
    assert not {f.question for f in told} & {f.question for facts, _ in test for f in facts}
    assert not {u.text for u in DEV_UPDATES} & {u.text for u in UPDATES}
    for _, u in dev:
        if u:
            old = dev_nights()[u.night][u.index]
            assert u.answer.lower() not in old.text.lower() and u.answer in u.text
    cur = nights_suite._current(dev, 6)
    u = dev[2][1]
    assert cur[u.night][u.index].answer == u.answer
    with pytest.raises(InputError, match="1..7 with --dev"):
        nights_suite.schedule(8, 8, dev=True)


def test_the_everyday_development_set_asks_in_other_words_and_shares_nothing_with_the_others():
    """`--dev --dev-set everyday`: 5 nights of 8, every answer in its statement, every question new, updates
    that change a told fact to a value its old statement never gave; nothing shared with the test set or
    with the other development set."""
    from agentsleep.textmatch import contains_answer, content_tokens

    plan = nights_suite.schedule(5, 8, dev=True, dev_set="everyday")
    told = [f for facts, _ in plan for f in facts]
    others = [f for facts, _ in nights_suite.schedule(5, 8) + nights_suite.schedule(7, 8, dev=True) for f in facts]
    assert len(told) == 40 and len({f.question for f in told}) == 40
    assert all(contains_answer(f.text, f.answer) for f in told)
    assert not {f.question for f in told} & {f.question for f in others}
    assert not {f.text for f in told} & {f.text for f in others}
    # asked in other words: at most half of a question's content words are in its statement
    for f in told:
        q, t = set(content_tokens(f.question)), set(content_tokens(f.text))
        assert 2 * len(q & t) <= len(q), f.question
    updates = [u for _, u in plan if u]
    assert len(updates) == 3
    for u in updates:
        old = told[8 * u.night + u.index]
        assert contains_answer(u.text, u.answer) and not contains_answer(old.text, u.answer)
    with pytest.raises(InputError, match="--dev-set must be one of bench, everyday"):
        nights_suite.schedule(5, 8, dev=True, dev_set="weekly")
    with pytest.raises(InputError, match=r"1\.\.5 with --dev --dev-set everyday"):
        nights_suite.schedule(6, 8, dev=True, dev_set="everyday")


def test_nights_suite_reports_every_morning_from_real_sleeps(tmp_path):
    from agentsleep.home import Home
    from agentsleep.bench.sleep_suite import closed_book

    cfg = _config(str(tiny_model_dir(tmp_path / "models")))
    res = nights_suite.run(tmp_path / "out", say=lambda m: None, nights=3, facts_per_night=2, seeds=1, config=cfg)
    [run] = res["runs"]
    assert [m["night"] for m in run["mornings"]] == [1, 2, 3]
    assert 0 <= run["in_context"] <= 1 and res["targets"]["in_context"]["mean"] == run["in_context"]
    home_dir = tmp_path / "out" / "seed-0" / "home"
    for m in run["mornings"]:
        rep = json.loads((home_dir / "sleeps" / m["sleep_id"] / "report.json").read_text())
        assert rep["status"] == m["status"] and m["seconds"] > 0            # each morning follows a real sleep
        assert len(m["accuracy"]) == m["night"] and m["told"] == 2 * m["night"]
        assert m["remembered"] == m["told"] + m["updates"] and 0 <= m["consolidated"] <= m["remembered"]
        assert all(0 <= a <= 1 for a in m["accuracy"]) and m["disk_bytes"] >= 0 and m["drift_base"] >= 0
        assert [round(1 - len(ms) / 2, 3) for ms in m["missed"]] == m["accuracy"]   # the misses name the facts
        if m["status"] != "promoted":
            assert m["reasons"]
    assert run["mornings"][2]["update_told"] and run["mornings"][2]["updates"] == 1
    assert run["mornings"][2]["updated"] is not None and run["mornings"][1]["updated"] is None
    with Home.open(home_dir) as h:  # the last morning's figures are the serving version's answers
        live = h.engine.live
        sets = nights_suite._current(nights_suite.schedule(3, 2), 2)
        assert run["mornings"][2]["accuracy"] == [round(closed_book(live.model, live.tok, s)[0], 3) for s in sets]
    assert [len(p["matrix_row"]) for p in res["per_night"]] == [1, 2, 3]
    assert set(res["targets"]) >= {"every_night_promoted", "recall", "min_retention", "updated", "max_disk_share", "met"}
    md = nights_suite.markdown(res, tmp_path)
    assert "| 3 | " in md and "Targets after the last night" in md
    assert (tmp_path / "bench_nights_3x2.png").stat().st_size > 1000
    said: list[str] = []  # each seed was saved when it ended: a rerun of the same code and plan reuses it
    again = nights_suite.run(tmp_path / "out", say=said.append, nights=3, facts_per_night=2, seeds=1, config=cfg)
    assert any("reusing the result saved" in m for m in said) and again["runs"][0]["mornings"] == run["mornings"]
    saved = tmp_path / "out" / "seed-0" / "result.json"
    assert nights_suite._saved_seed(saved, nights_suite._seed_key(3, 2, False, cfg, 0)) is not None
    assert nights_suite._saved_seed(saved, nights_suite._seed_key(3, 2, True, cfg, 0)) is None   # another plan
    assert nights_suite._saved_seed(saved, nights_suite._seed_key(3, 2, False, {**cfg, "x": 1}, 0)) is None
    md = nights_suite.markdown({**res, "dev": True}, tmp_path)  # a development run says so, with a plot of its own
    assert "development facts" in md and (tmp_path / "bench_nights_dev_3x2.png").is_file()
    md = nights_suite.markdown({**res, "config": {}, "env": {}}, tmp_path)
    assert "with the default config" in md                           # AGENTSLEEP_* settings are named when set
    assert '{"replay_dreams": "6"}' in nights_suite.markdown({**res, "config": {}, "env": {"sleep": {"replay_dreams": "6"}}},
                                                             tmp_path)


def test_a_stopped_run_resumes_at_the_next_night_on_the_same_home(tmp_path):
    """A long run (20 nights take hours) saves each morning: stopped after night 1 it resumes at night 2 on
    the same home, and stopped after night 2's sleep but before its morning it measures that sleep instead
    of sleeping again."""
    cfg = _config(str(tiny_model_dir(tmp_path / "models")))
    out, home = tmp_path / "out", tmp_path / "out" / "seed-0" / "home"

    def stop_after_night_one(msg: str) -> None:
        if "night 1 " in msg:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nights_suite.run(out, say=stop_after_night_one, nights=2, facts_per_night=2, seeds=1, config=cfg)
    saved = json.loads((out / "seed-0" / "progress.json").read_text())
    assert [m["night"] for m in saved["mornings"]] == [1] and not (out / "seed-0" / "result.json").exists()
    said: list[str] = []
    res = nights_suite.run(out, say=said.append, nights=2, facts_per_night=2, seeds=1, config=cfg)
    assert any("resuming after night 1" in m for m in said)
    [run] = res["runs"]
    assert run["mornings"][0] == saved["mornings"][0] and [m["night"] for m in run["mornings"]] == [1, 2]
    assert len(list((home / "sleeps").glob("*/report.json"))) == 2           # night 1 was not slept again
    assert run["mornings"][1]["remembered"] == 4                              # nor its facts told twice
    # stopped between night 2's sleep and its morning: the sleep that ended is measured, not repeated
    (out / "seed-0" / "result.json").unlink()
    atomic = {**saved, "mornings": run["mornings"][:1], "first": [run["mornings"][0]["accuracy"][0]]}
    (out / "seed-0" / "progress.json").write_text(json.dumps(atomic))
    again = nights_suite.run(out, say=lambda m: None, nights=2, facts_per_night=2, seeds=1, config=cfg)
    night2 = again["runs"][0]["mornings"][1]
    assert night2["sleep_id"] == run["mornings"][1]["sleep_id"] and night2["status"] == run["mornings"][1]["status"]
    assert night2["accuracy"] == run["mornings"][1]["accuracy"] and night2["seconds"] > 0
    assert len(list((home / "sleeps").glob("*/report.json"))) == 2 and night2["remembered"] == 4
    assert again["targets"]["time_ratio"] is not None and not again["targets"]["long"]


def test_a_set_told_on_a_rejected_night_takes_its_first_level_from_the_night_that_takes_it():
    first = nights_suite.first_levels([], [0.875], True)
    assert first == [0.875]
    first = nights_suite.first_levels(first, [0.875, 0.0], False)       # night 2 rejected: set 2 waits
    assert first == [0.875, None]
    first = nights_suite.first_levels(first, [0.75, 0.75, 0.25], True)  # night 3 takes sets 2 and 3
    assert first == [0.875, 0.75, 0.25]


def test_retention_counts_only_facts_not_updated_since_their_first_morning():
    """An updated fact is asked for its new answer: not knowing it yet is the `updated` figure, not a loss of
    the set's first level (which never knew the new answer). Later-learned facts still count."""
    first = nights_suite.first_missed_of([{"first_level": [0.75], "missed": [[3]]},
                                          {"first_level": [0.75, None], "missed": [[3], [0, 1, 2, 3]]},
                                          {"first_level": [0.75, 0.5], "missed": [[0], [1, 3]]}], 2)
    assert first == [[3], [1, 3]]
    # set 0: fact 0 was updated (its new answer missed) -> not a loss; facts 1, 2 kept: 2 of 2
    assert nights_suite.set_retention([4, 4], [[0, 3], [1, 3]], first, {(0, 0)}) == [1.0, 1.0]
    # without the update, missing fact 0 is a loss: 2 of the 3 first-morning facts
    assert nights_suite.set_retention([4, 4], [[0, 3], [1, 3]], first, set()) == [0.667, 1.0]
    assert nights_suite.set_retention([4, 4, 4], [[], [], []], first + [None], set())[2] is None
