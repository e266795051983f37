"""No stalls: a rejected night's episodes are retried with a changed plan, then back off per episode,
then are set aside after sleep.quarantine_after failures; the others proceed; `retry` releases them."""
from __future__ import annotations

import pytest

from agentsleep.config import Config
from agentsleep.errors import InputError
from agentsleep.home import Home
from agentsleep.memory.ledger import SKIPPED, Ledger
from agentsleep.sleep.pipeline import Night
from agentsleep.sleep.retry import record_failure, retry_config
from agentsleep.sleep.select import select
from cli_helpers import run_cli
from tiny import grounded_writer, tiny_model_dir, trusting_check


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("models"))


def test_each_episode_backs_off_then_is_set_aside(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    kw = dict(backoff=1, quarantine_after=4)
    waits = []
    for k in range(4):
        now = led.sleeps()
        a = led.fail(["e1"], f"s{k}", "retention", f"reason {k}", now_sleep=now, **kw)["e1"]
        waits.append(a.wait_until - now - 1)  # sleeps it sits out
        led.tick()
    # the first failure is retried at once, then 1, 2 sleeps out; the fourth sets it aside
    assert waits[:3] == [0, 1, 2] and a.failures == 4 and a.quarantined
    assert led.versions_of(["e1"]) == {"e1": SKIPPED + "s3"}
    assert led.attempts()["e1"].quarantined and led.attempts()["e1"].reason == "reason 3"
    led.fail(["e2"], "s9", "net", "x", now_sleep=led.sleeps(), **kw)
    assert led.release(["e1"]) == ["e1"] and led.versions_of(["e1"]) == {} and "e1" not in led.attempts()
    assert led.release() == ["e2"] and led.attempts() == {}
    led.mark(["old"], SKIPPED + "s0", "s0")  # set aside before attempts were counted: shown and released alike
    assert led.attempts()["old"].quarantined and led.attempts(["old"])["old"].sleep_id == "s0"
    assert led.release(["old"]) == ["old"] and led.versions_of(["old"]) == {}


def _home(tmp_path, tiny, **sleep):
    cfg = Config.model_validate({"model": {"base": str(tiny)}, "sleep": sleep})
    return Home.open(Home.init(tmp_path / "home", config=cfg))


def test_backed_off_episodes_do_not_block_the_cap_and_retries_change_the_plan(tiny, tmp_path):
    h = _home(tmp_path, tiny, max_episodes=2, retry_backoff=2, quarantine_after=3)
    ids = [h.remember(f"The user's locker {i} code is {1000 + i}.").id for i in range(4)]
    plan = select(h)
    assert [m.id for m in plan.memories] == ids[:2] and plan.attempt == 0
    n = Night(h, plan, None, lambda: False, lambda *a: None, 0.0)
    lines, quarantined = record_failure(n, ["retention"], ["lost 5 earlier facts for 8 gained"])
    assert quarantined == {} and "2 episode(s) will be retried at the next sleep with a changed plan" in lines[0]
    h.store.ledger.tick()
    # first retry: the same two, with another seed and more rehearsal
    plan = select(h)
    assert [m.id for m in plan.memories] == ids[:2] and (plan.attempt, plan.retry_failed) == (1, "retention")
    cfg, changed = retry_config(h.config.sleep, plan)
    assert cfg.seed.seed != h.config.sleep.seed.seed and cfg.replay_dreams == h.config.sleep.replay_dreams + 2
    assert changed["attempt"] == 1 and h.config.sleep.replay_dreams == 3  # the home's settings are untouched
    n = Night(h, plan, None, lambda: False, lambda *a: None, 0.0)
    lines, _ = record_failure(n, ["recall_gain"], ["recall gain +0.00"])
    # failed again: split in two that come back a sleep apart (one bad episode drags fewer others along)
    assert "2 episode(s) failed again and sit out the next 2/3 sleep(s)" in lines[0]
    h.store.ledger.tick()
    # the two wait out their backoff: the cap of 2 goes to the others
    plan = select(h)
    assert [m.id for m in plan.memories] == ids[2:] and plan.backed_off == 2 and plan.attempt == 0
    held = {r["episode_id"]: r for r in h.status()["held_back"]}
    assert held[ids[0]]["state"] == "waits 2 more sleep(s)" and held[ids[0]]["failed"] == "recall_gain"
    assert held[ids[1]]["state"] == "waits 3 more sleep(s)"
    h.store.ledger.tick()
    h.store.ledger.tick()
    plan = select(h)
    assert [m.id for m in plan.memories] == [ids[0], ids[2]] and plan.attempt == 2  # its half, then the others
    cfg, changed = retry_config(h.config.sleep, plan)
    assert cfg.seed.min_steps > h.config.sleep.seed.min_steps and changed["after"] == "recall_gain"
    n = Night(h, plan, None, lambda: False, lambda *a: None, 0.0)
    lines, quarantined = record_failure(n, ["net"], ["lost 3 earlier facts for 2 gained"])
    assert set(quarantined) == {ids[0]} and "set aside after 3 failed attempts" in lines[-1]
    assert "lost 3 earlier facts" in quarantined[ids[0]]
    h.store.ledger.tick()
    plan = select(h)
    assert ids[1] in [m.id for m in plan.memories] and plan.attempt == 2  # the other half, a sleep later
    n = Night(h, plan, None, lambda: False, lambda *a: None, 0.0)
    assert ids[1] in record_failure(n, ["net"], ["lost 3 earlier facts for 2 gained"])[1]
    # set aside: out of the sleep, still in the store and in recall, released by retry
    assert select(h).quarantined == 2 and not {ids[0], ids[1]} & {m.id for m in select(h).memories}
    assert h.recall("locker 0 code", 4)[0].text.startswith("The user's locker")
    with pytest.raises(InputError, match="not held back"):
        h.retry(["ep-never-held"])
    assert h.retry([ids[0]]) == [ids[0]]
    assert ids[0] in [m.id for m in select(h).memories]  # released: taken again
    assert set(h.retry()) >= {ids[1]} and not [r for r in h.held_back() if r["episode_id"] == ids[1]]
    h.store.ledger.fail(ids, "s9", "net", "x", now_sleep=h.store.ledger.sleeps(), backoff=1, quarantine_after=0)
    h.store.ledger.fail(ids, "s9", "net", "x", now_sleep=h.store.ledger.sleeps(), backoff=1, quarantine_after=0)
    rep = h.sleep()  # everything waits: nothing to do, and the report says why
    assert rep.status == "nothing-to-do" and "not waiting out a backoff" in rep.reasons[0]
    assert "4 episode(s) wait out a backoff" in rep.reasons[1]


def test_a_retry_rehearses_first_what_the_rejected_night_forgot(tiny, tmp_path):
    """The rejected night's expert answered the retention sample too (its results stay in the ledger as
    candidate:<sleep id>): the retry puts the earlier episodes it missed first in the rehearsal budget."""
    from agentsleep.memory.ledger import CANDIDATE, probe_id

    h = _home(tmp_path, tiny, replay_episodes=2)
    old = [h.remember(f"The user's locker {i} code is {1000 + i}.").id for i in range(6)]
    h.store.ledger.mark(old, h.registry.current_name(), "s-old")
    new = h.remember("The user's bike is green.").id
    plan = select(h)
    n = Night(h, plan, None, lambda: False, lambda *a: None, 0.0)
    record_failure(n, ["net"], ["lost 3 earlier facts for 2 gained"])
    led = h.store.ledger
    led.record_probes([(probe_id("Q?", e), e, "Q?", e) for e in old])
    led.record_results(CANDIDATE + plan.sleep_id, {probe_id("Q?", old[4]): False, probe_id("Q?", old[5]): False,
                                                   probe_id("Q?", old[0]): True})
    led.tick()
    retry = select(h)
    assert [m.id for m in retry.memories] == [new] and retry.attempt == 1
    assert {m.id for m in retry.replay} == {old[4], old[5]}


def test_cli_shows_why_and_releases(tiny, tmp_path):
    h = _home(tmp_path, tiny, quarantine_after=1)
    e = h.remember("The user's gate code is 5519.").id
    plan = select(h)
    record_failure(Night(h, plan, None, lambda: False, lambda *a: None, 0.0), ["net"], ["lost 4 for 1 gained"])
    h.close()
    human = run_cli("status", home=h.root).out
    assert "held back from consolidation" in human and "set aside" in human and "lost 4 for 1 gained" in human
    assert "lost 4 for 1 gained" in run_cli("history", home=h.root).out
    assert "give episode ids or --all" in run_cli("retry", home=h.root).one_line_error()
    r = run_cli("retry", "--all", "--json", home=h.root)
    assert r.code == 0 and r.json() == {"released": [e]}
    with Home.open(h.root, writable=False) as again:
        assert again.status()["held_back"] == [] and [m.id for m in select(again).memories] == [e]



def test_a_night_the_gate_rejects_is_retried_changed_then_set_aside(tiny, tmp_path, monkeypatch):
    """End to end on the tiny model: the gate rejects (a recall gain no sleep can show); the next sleep
    retakes the episode with another seed and more steps, and says so; after sleep.quarantine_after
    failures it is set aside with the reason, and the sleep after that has nothing to do."""
    monkeypatch.setattr("agentsleep.sleep.dream.write", grounded_writer)
    monkeypatch.setattr("agentsleep.sleep.evidence.checked", trusting_check)  # the gate can measure recall
    h = _home(tmp_path, tiny, quarantine_after=2, seed={"replay_prompts": 2, "epochs": 1, "min_steps": 2},
              rest={"rounds": 0}, dream={"per_episode": 3, "teacher_agreement": False},
              gate={"drift_prompts": 2, "min_recall_gain": 2.0, "max_drift_kl": 1000})
    e = h.remember("The user's locker code is 4417.").id
    first = h.sleep()
    assert first.status == "rejected" and "retry" not in first.metrics
    assert any("1 episode(s) will be retried at the next sleep" in r for r in first.reasons), first.reasons
    second = h.sleep()
    assert second.status == "rejected" and second.episodes == [e]
    retry = second.metrics["retry"]
    assert retry["attempt"] == 1 and retry["after"] == "recall_gain" and retry["min_steps"] == 3
    assert retry["seed"] != h.config.sleep.seed.seed and second.dreams["skipped"][e].startswith("set aside after 2")
    assert h.sleep().status == "nothing-to-do" and h.held_back()[0]["state"] == "set aside"
    assert h.retry() == [e] and h.sleep(dry_run=True).episodes == [e]
    h.close()


def test_a_rejected_rebuild_is_retried_with_a_changed_plan_not_the_same_verdict(tiny, tmp_path):
    """A rebuild after `forget` never sets its episodes aside; without a count of its attempts it would be
    retried the same way, with the same verdict, every night while the tainted version serves."""
    from agentsleep.sleep.select import load_rebuild, save_rebuild

    h = _home(tmp_path, tiny)
    ids = [h.remember(f"The user's locker {i} code is {1000 + i}.").id for i in range(3)]
    h.store.ledger.mark(ids[:2], "v0001", "s-tainted")  # in the weights before the forget
    save_rebuild(h.root, {"from": h.registry.current_name(), "versions": ["v0001"], "forgotten": ["ep-x"]})
    plan = select(h)
    assert plan.rebuild and plan.attempt == 0 and {m.id for m in plan.memories} == set(ids)
    n = Night(h, plan, None, lambda: False, lambda *a: None, 0.0)
    lines, quarantined = record_failure(n, ["net"], ["lost 2 earlier facts for 1 gained"])
    assert quarantined == {} and "rebuild after `forget` will be retried" in lines[0]
    # what the weights held never backs off; the new episode that rode along counts its attempt (else a
    # daemon without cron would sleep on it again at once, rebuild after rebuild)
    assert load_rebuild(h.root)["attempts"] == 1 and set(h.store.ledger.attempts()) == {ids[2]}
    assert any("1 episode(s) will be retried at the next sleep" in line for line in lines)
    plan = select(h)
    assert (plan.attempt, plan.retry_failed) == (1, "net") and {m.id for m in plan.memories} == set(ids)
    cfg, changed = retry_config(h.config.sleep, plan)
    assert cfg.seed.seed != h.config.sleep.seed.seed and cfg.replay_dreams > h.config.sleep.replay_dreams
    h.close()


def test_a_retry_after_too_little_gain_adds_an_epoch_even_from_one(tiny, tmp_path):
    h = _home(tmp_path, tiny, seed={"epochs": 1, "min_steps": 1})
    h.remember("The user's locker code is 1000.")
    n = Night(h, select(h), None, lambda: False, lambda *a: None, 0.0)
    record_failure(n, ["recall_gain"], ["recall gain +0.00"])
    h.store.ledger.tick()
    cfg, _ = retry_config(h.config.sleep, select(h))
    assert (cfg.seed.epochs, cfg.seed.min_steps) == (2, 2)
    h.close()


def test_a_sleep_that_crashes_on_its_episodes_counts_an_attempt(tiny, tmp_path, monkeypatch):
    """An episode that makes a stage raise must not be retaken, oldest first, by every sleep: the crash
    counts one failed attempt, so the batch backs off and the others proceed."""
    import agentsleep.sleep.pipeline as pipeline

    h = _home(tmp_path, tiny, max_episodes=1, retry_backoff=1)
    bad, good = (h.remember(t).id for t in ("The user's locker code is 1000.", "The user's bike is red."))

    def boom(n):
        raise ValueError("a stage choked on this episode")
    monkeypatch.setattr(pipeline, "STAGES", (("dream", boom, None),))
    for _ in range(2):
        with pytest.raises(ValueError):
            h.sleep()
    a = h.store.ledger.attempts()[bad]
    assert a.failures == 2 and a.failed == "crashed" and "choked" in a.reason
    assert [m.id for m in select(h).memories] == [good]  # the crashed one sits out its backoff

    def full(n):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pipeline, "STAGES", (("dream", full, None),))
    with pytest.raises(OSError):
        h.sleep()
    assert good not in h.store.ledger.attempts()  # the machine's fault, not the episode's: nothing counted
    h.close()


def test_update_detection_skips_episodes_no_sleep_will_take(tiny, tmp_path):
    """Untrusted episodes never leave the waiting list: they must neither fill the detection window for good
    nor supersede a consolidated fact with a value that will never be learned."""
    h = _home(tmp_path, tiny, max_episodes=1)
    old = h.remember("I live in Porto.").id
    h.store.ledger.mark([old], h.registry.current_name(), "s-test")
    for i in range(3):  # more untrusted episodes than the window (2 x max_episodes)
        h.remember(f"Web page {i}: cheap flights to Rome.", trust="untrusted")
    h.remember("We moved from Porto to Lisbon last month.", trust="untrusted")
    from agentsleep.memory.supersede import superseded
    from agentsleep.sleep.pipeline import detect_updates

    assert detect_updates(h) == [] and superseded(h.store.ledger.path) == {}
    new = h.remember("We moved from Porto to Lisbon last month!").id
    assert [(o, n_) for o, n_, _ in detect_updates(h)] == [(old, new)]  # found past the untrusted ones
    h.close()


def test_a_sleep_killed_after_publishing_is_not_trained_again(tiny, tmp_path, monkeypatch):
    """Killed between flipping CURRENT and its ledger writes, a sleep leaves the new version holding
    episodes the ledger still calls waiting: the next sleep marks them from the manifests instead of
    training them a second time on top of the version that holds them."""
    h = _home(tmp_path, tiny, seed={"replay_prompts": 2, "epochs": 1, "min_steps": 2},
              rest={"rounds": 0}, dream={"per_episode": 3, "teacher_agreement": False},
              gate={"drift_prompts": 2, "min_recall_gain": -1.0, "max_drift_kl": 1000, "max_base_drift_kl": 1000,
                    "loss_allowance": 1000})
    ids = [h.remember(f"The user's locker {i} code is {1000 + i}.").id for i in range(2)]

    real_mark = Ledger.mark

    def killed(self, *a, **k):
        raise KeyboardInterrupt("killed after publishing")

    monkeypatch.setattr("agentsleep.sleep.dream.write", grounded_writer)
    monkeypatch.setattr(Ledger, "mark", killed)
    with pytest.raises(Exception, match="killed after publishing"):
        h.sleep()
    monkeypatch.setattr(Ledger, "mark", real_mark)
    assert h.registry.current_name() == "v0001" and h.store.ledger.versions_of(ids) == {}
    rep = h.sleep()
    assert rep.status == "nothing-to-do", (rep.status, rep.reasons)
    assert h.store.ledger.versions_of(ids) == {i: "v0001" for i in ids} and h.registry.current_name() == "v0001"
    h.close()


def test_the_ledger_is_reconciled_from_the_manifests_unless_a_rebuild_is_pending(tiny, tmp_path):
    from agentsleep.models.registry import BASE_VERSION
    from agentsleep.sleep.pipeline import reconcile_ledger
    from agentsleep.sleep.select import save_rebuild

    h = _home(tmp_path, tiny)
    ids = [h.remember(f"The user's locker {i} code is {1000 + i}.").id for i in range(3)]
    stage = h.registry.new_staging()
    (stage / "model.safetensors").write_text("w")
    h.registry.commit(stage, {"parent": BASE_VERSION, "sleep_id": "s1", "episode_ids": ids[:2]})
    h.store.ledger.forget([ids[1]])  # forgotten since: never marked again
    save_rebuild(h.root, {"from": BASE_VERSION, "versions": ["v0001"], "forgotten": [ids[1]]})
    assert reconcile_ledger(h) == [] and h.store.ledger.versions_of(ids) == {}  # the rebuild retakes them
    save_rebuild(h.root, None)
    assert reconcile_ledger(h) == [ids[0]] and h.store.ledger.versions_of(ids) == {ids[0]: "v0001"}
    h.close()
