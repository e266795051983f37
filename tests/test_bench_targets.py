"""The sleep suite's acceptance targets are judged against the gate's own bound, never vacuously."""
from agentsleep.config import GateConfig
from agentsleep.bench.sleep_suite import drift_within_bound, targets


def _sleep(status="promoted", drift=0.05):
    return {"status": status, "metrics": {} if drift is None else {"drift_kl": drift}}


def _res(*sleeps, bound=None):
    res = {"facts_per_sleep": 10, "a_after_sleep1": 0.8, "a_plain_lora": 0.5, "sleep1_seconds": 300.0,
           "sleep1": sleeps[0]}
    if len(sleeps) > 1:
        res.update({"sleep2": sleeps[1], "sleep2_seconds": 320.0, "b_after_sleep2": 0.8, "a_retention": 0.95})
    if bound is not None:
        res["gate_max_drift_kl"] = bound
    return res


def test_drift_within_bound_compares_to_the_gate_bound():
    assert drift_within_bound([_sleep(drift=0.05)], 0.3)
    assert drift_within_bound([_sleep(drift=0.3)], 0.3)  # the gate promotes at the bound itself (kl > bound fails)
    assert not drift_within_bound([_sleep(drift=0.31)], 0.3)
    assert not drift_within_bound([_sleep(drift=None)], 0.3)  # promoted but never measured
    assert not drift_within_bound([_sleep(drift=0.05), _sleep(drift=0.9)], 0.3)  # every promoted sleep counts


def test_drift_target_fails_when_nothing_was_promoted():
    assert not drift_within_bound([], 0.3)
    assert not drift_within_bound([_sleep("rejected", 0.01)], 0.3)
    assert not drift_within_bound([_sleep("rejected", 0.01), _sleep("nothing-to-do", None)], 0.3)
    # a rejected sleep's drift never served anyone: only the promoted ones are judged
    assert drift_within_bound([_sleep("promoted", 0.1), _sleep("rejected", 5.0)], 0.3)


def test_targets_use_the_recorded_bound_and_fail_on_no_promotion():
    key = "drift within gate bound"
    assert targets(_res(_sleep(drift=0.2), bound=0.3))[key]
    assert not targets(_res(_sleep(drift=0.2), bound=0.1))[key]  # the run's own gate.max_drift_kl
    assert not targets(_res(_sleep(drift=GateConfig().max_drift_kl + 0.5)))[key]  # older results: the default bound
    assert not targets(_res(_sleep("rejected", 0.01)))[key]
    assert not targets(_res(_sleep("rejected", 0.01), _sleep("rejected", 0.01), bound=0.3))[key]
    assert not targets(_res(_sleep(drift=0.1), _sleep(drift=0.4), bound=0.3))[key]


# ---- bench phrasing: its targets, and rows kept across runs of some voices ----

from agentsleep.bench import phrasing_suite  # noqa: E402


def _run(seed, sleep=0.85, lora=0.5, status="promoted", drift=0.04, seconds=440.0):
    return {"seed": seed, "before": 0.0, "in_context": 0.8, "sleep": sleep, "plain_lora": lora,
            "same_dreams_sft": 0.7, "sleep_seconds": seconds, "status": status, "drift_kl": drift}


def _row(runs, facts=20, measured="2026-12-05"):
    row = {"facts": facts, "runs": runs, "measured": measured, "promoted": sum(r["status"] == "promoted" for r in runs)}
    for key in ("before", "in_context", "sleep", "plain_lora", "same_dreams_sft", "sleep_seconds", "drift_kl"):
        row[key] = phrasing_suite._stats([r[key] for r in runs])
    return row


def test_phrasing_targets_need_the_margin_every_promotion_and_drift_in_the_gate():
    ok = phrasing_suite.targets({"voices": {"assistant": _row([_run(0), _run(1)])}})
    assert all(ok.values()) and len(ok) == 4
    thin = phrasing_suite.targets({"voices": {"assistant": _row([_run(0, lora=0.75), _run(1, lora=0.75)])}})
    assert not thin["assistant_beats_plain_lora_by_0.15"]  # +0.10
    rejected = phrasing_suite.targets({"voices": {"assistant": _row([_run(0), _run(1, status="rejected")])}})
    assert not rejected["assistant_every_seed_promoted_with_drift_in_gate"]
    drifted = phrasing_suite.targets({"voices": {"assistant": _row([_run(0), _run(1, drift=0.9)])}})
    assert not drifted["assistant_every_seed_promoted_with_drift_in_gate"]
    slow = phrasing_suite.targets({"voices": {"first_person": _row([_run(0, seconds=1300.0)], facts=40)}})
    assert not slow["first_person_under_10_min_per_20_facts"]  # 650 s per 20 facts


def test_phrasing_rows_are_kept_only_from_runs_measured_the_same_way(tmp_path):
    path = tmp_path / "voices.json"
    code = {"commit": "abc1234", "versions": {"torch": "2.13.0"}, "defaults": {}, "env": {}}
    first = {"set": "test (bench/phrasings.py)", "seeds": 3, "baselines": True, "n_facts": None, "code": code,
             "voices": {"first_person": _row([_run(0)], facts=40, measured="2026-12-04")}}
    phrasing_suite._save(path, first)
    same = {**first, "voices": {}}
    assert list(phrasing_suite._saved(path, same)) == ["first_person"]
    for key, other in (("seeds", 1), ("baselines", False), ("n_facts", 5), ("set", "development (bench/facts.py variants)"),
                       ("code", {**code, "commit": "abc1234+dirty-0123456789"}),  # other code: measured again
                       ("code", {**code, "versions": {"torch": "2.14.0"}}), ("code", {**code, "commit": None})):
        assert phrasing_suite._saved(path, {**same, key: other}) == {}, key
    path.write_text("{not json")
    assert phrasing_suite._saved(path, same) == {}  # a broken file is a fresh start, never an error


def test_phrasing_markdown_says_when_rows_were_measured_on_different_days(tmp_path):
    res = {"set": "test (bench/phrasings.py)", "seeds": 1,
           "voices": {"first_person": _row([_run(0)], facts=40, measured="2026-12-04"),
                      "assistant": _row([_run(0)], measured="2026-12-05")}}
    res["targets"] = phrasing_suite.targets(res)
    md = phrasing_suite.markdown(res, tmp_path)
    assert "| first_person | 40 |" in md and "| assistant | 20 |" in md
    assert "first_person 2026-12-04, assistant 2026-12-05" in md
    res["voices"]["first_person"]["measured"] = "2026-12-05"
    assert "Rows measured on" not in phrasing_suite.markdown(res, tmp_path)


def test_the_chat_development_set_is_a_dev_voice_with_answers_in_the_messages():
    from agentsleep.bench.facts import CHAT
    from agentsleep.bench.phrasing_suite import SOURCE, dev_sets
    from agentsleep.textmatch import contains_answer, trivial

    sets = dev_sets()
    assert sets["chat"] == CHAT and SOURCE["chat"] == "user" and len(CHAT) == 20
    for f in CHAT:  # each answer is in its message, and its question does not give it away
        assert contains_answer(f.text, f.answer) and not trivial(f.question, f.answer), f


def test_the_held_out_phrasing_sets_are_well_formed_and_disjoint():
    """Both test sets: the sizes the suite reports, each answer in its fact and not given away by its
    question, and set b shares no answer with set a or the development facts (a new reading, not a rerun)."""
    from agentsleep.bench import facts as dev
    from agentsleep.bench.phrasing_suite import test_sets
    from agentsleep.textmatch import contains_answer, trivial

    a, b = test_sets("a"), test_sets("b")
    for sets in (a, b):
        assert {v: len(fs) for v, fs in sets.items()} == {"first_person": 40, "third_person": 20, "assistant": 20}
        for f in (f for fs in sets.values() for f in fs):
            assert contains_answer(f.text, f.answer) and not trivial(f.question, f.answer), f
    seen = {f.answer.lower() for fs in a.values() for f in fs}
    seen |= {f.answer.lower() for fs in (dev.SET_A, dev.SET_B, dev.SET_C, dev.CHAT) for f in fs}
    clash = [f.answer for fs in b.values() for f in fs if f.answer.lower() in seen]
    assert not clash, clash
