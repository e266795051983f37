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
