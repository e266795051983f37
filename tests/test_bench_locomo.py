"""The LoCoMo suite end to end on a tiny random model and a synthetic conversation in LoCoMo's format:
retrieval recall, and the weights-only / both variants after sleeping the sessions in order."""
import json

import pytest

FAST_SLEEP = {"SEED__EPOCHS": "1", "SEED__MIN_STEPS": "0", "SEED__REPLAY_PROMPTS": "4", "REST__ROUNDS": "0",
              "DREAM__PER_EPISODE": "2", "DREAM__TEACHER_AGREEMENT": "false", "GATE__DRIFT_PROMPTS": "2",
              "GATE__MIN_RECALL_GAIN": "-1", "GATE__MIN_RETENTION": "0", "GATE__MAX_DRIFT_KL": "1000"}


_READ: list[str] = []  # the notes the sleeps read


def _grounded_writer(model, tok, memories, cfg, progress=None):
    """Two parseable, grounded dreams per turn: a random tiny model writes none, so every sleep would be
    rejected and the weights-only path never tested."""
    from agentsleep.sleep.types import Dream

    out = []
    for m in memories:
        _READ.append(m.view)
        speaker, said = m.who, m.text
        # one question per memory (the same question with two answers would be dropped as conflicting)
        out += [Dream(m.id, f"Who said message {m.id} in the conversation?", speaker, stem="Who"),
                Dream(m.id, f"What was the final word of message {m.id}?", said.rstrip(".!?").split()[-1], stem="What")]
    return out


def _turn(dia, speaker, text):
    return {"dia_id": dia, "speaker": speaker, "text": text}


def _conversation():
    """Three sessions (session_1 has 3 turns: with a cap of 2, D1:3 is never remembered) and QA whose
    evidence falls inside, outside or partly outside the slept turns."""
    return {
        "speaker_a": "Ana", "speaker_b": "Ben",
        "session_1_date_time": "1 May 2023", "session_1": [
            _turn("D1:1", "Ana", "I adopted a beagle called Rufus last week."),
            _turn("D1:2", "Ben", "Lovely! I started learning the cello."),
            _turn("D1:3", "Ana", "My sister moved to Lisbon in April.")],
        "session_2_date_time": "8 May 2023", "session_2": [
            _turn("D2:1", "Ana", "Rufus chewed my running shoes."),
            _turn("D2:2", "Ben", "I played my first cello recital on Sunday.")],
        "session_3_date_time": "15 May 2023", "session_3": [
            _turn("D3:1", "Ana", "We are flying to Oslo in June."),
            _turn("D3:2", "Ben", "Bring a warm coat.")],
        "qa": [
            {"question": "What is the name of Ana's dog?", "answer": "Rufus", "evidence": ["D1:1"], "category": 1},
            {"question": "What instrument does Ben play?", "answer": "cello", "evidence": ["D2:2"], "category": 2},
            {"question": "What did Rufus chew?", "answer": "running shoes", "evidence": ["D1:1", "D2:1"], "category": 4},
            {"question": "Where is Ana flying?", "answer": "Oslo", "evidence": ["D3:1"], "category": 1},
            {"question": "Where did Ana's sister move?", "answer": "Lisbon", "evidence": ["D1:3"], "category": 1},
            {"question": "What did Ben realise at the recital?", "evidence": ["D2:2"], "category": 5,
             "adversarial_answer": "he needs a teacher"},
        ]}


@pytest.fixture
def locomo_data(tmp_path, monkeypatch):
    from tiny import tiny_model_dir

    monkeypatch.setenv("AGENTSLEEP_MODEL__BASE", str(tiny_model_dir(tmp_path)))
    for k, v in FAST_SLEEP.items():
        monkeypatch.setenv(f"AGENTSLEEP_SLEEP__{k}", v)
    data = tmp_path / "locomo.json"
    data.write_text(json.dumps({"conv-1": _conversation()}))
    return data


def test_locomo_sleeps_sessions_in_order_and_scores_four_variants(tmp_path, locomo_data, monkeypatch):
    from agentsleep.bench import locomo_suite

    monkeypatch.setattr("agentsleep.sleep.dream.write", _grounded_writer)
    _READ.clear()
    res = locomo_suite.run(tmp_path / "l", conversations=1, answer_sample=2, data=locomo_data, say=lambda m: None,
                           sleep_sessions=2, sleep_episodes_cap=2)
    assert res["turns"] == 7 and 0 <= res["recall@5"] <= 1  # the retrieval home holds every turn
    s = res["sleep"]
    assert s["conversation"] == "conv-1" and s["sessions"] == ["session_1", "session_2"]
    assert [r["session"] for r in s["sleeps"]] == ["session_1", "session_2"]  # one sleep per session, in order
    assert [r["status"] for r in s["sleeps"]] == ["promoted", "promoted"], [r.get("reasons") for r in s["sleeps"]]
    assert [r["version"] for r in s["sleeps"]] == ["v0001", "v0002"] and s["version"] == "v0002"
    assert all(r["seconds"] > 0 and "drift_kl" in r for r in s["sleeps"])
    assert [r["remembered"] for r in s["sleeps"]] == [r["episodes"] for r in s["sleeps"]] == [2, 2]
    assert s["capped"] == ["session_1"]
    # each turn is read as its speaker's, dated: not "[1 May 2023] Ana: the user adopted ..."
    assert "On 1 May 2023, Ana adopted a beagle called Rufus last week." in _READ, _READ
    # in: D1:1, D2:2, D1:1+D2:1; out: session 3 (not slept), D1:3 (over the cap); category 5 counted apart
    assert s["questions"] == 3 and s["questions_cat5"] == 1
    assert set(s["f1"]) == {"retrieval only", "weights only", "both", "base closed-book"}
    assert all(0 <= v <= 1 for v in s["f1"].values())
    assert locomo_suite.slept_questions(_conversation(), {"D1:1", "D1:2", "D2:1", "D2:2"})[0] == \
        _conversation()["qa"][:3]
    md = locomo_suite.markdown(res)
    assert "| evidence recall@5 (categories 1-4) |" in md  # the retrieval table stays
    assert "| weights only |" in md and "| both |" in md and "| 3 |" in md
    assert "- sleep 1 (session_1," in md and "- sleep 2 (session_2," in md and "capped at 2" in md
    old = {k: v for k, v in res.items() if k != "sleep"}  # a results file from before the sleep variant
    assert "weights only" not in locomo_suite.markdown(old)


def test_session_recall_counts_distinct_sessions():
    from agentsleep.bench.locomo_suite import session_recall

    ranked = ["D1:1", "D1:2", "D2:5", "D1:3", "D3:1", "D4:2"]
    assert session_recall({"D3:9"}, ranked, k=3) == 1.0       # a turn of D3 is in the first 3 sessions
    assert session_recall({"D4:2"}, ranked, k=3) == 0.0       # D4 is the 4th distinct session
    assert session_recall({"D2:1", "D9:1"}, ranked, k=10) == 0.5


def test_locomo_without_sleeps_and_bad_input(tmp_path, locomo_data):
    from agentsleep.bench import locomo_suite
    from agentsleep.errors import InputError

    res = locomo_suite.run(tmp_path / "l", conversations=1, answer_sample=0, data=locomo_data, say=lambda m: None,
                           sleep_sessions=0)
    assert "sleep" not in res and not (tmp_path / "l" / "sleep-home").exists()
    assert "| weights only |" not in locomo_suite.markdown(res)
    sr = res["session_recall"]  # the unit published figures count, beside the turn-level measure
    assert sr["k"] == 10 and 0 <= sr["all"] <= 1 and 0 <= sr["1-4"] <= 1
    assert "session-level recall@10" in locomo_suite.markdown(res)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert locomo_suite.run(tmp_path / "b", data=bad, say=lambda m: None)["skipped"].startswith("dataset ")
    with pytest.raises(InputError, match="sleep_sessions must be >= 0"):
        locomo_suite.run(tmp_path / "b", data=locomo_data, sleep_sessions=-1, say=lambda m: None)
