"""The routing gate and the restart policy that the single-home supervisor and the shared-base
lanes both use, on fake servers (no vLLM): leases wait, pin and fail as documented, a dead
server is restarted, and deaths are counted in a time window (old ones age out)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agentsleep.models.registry import Version
from agentsleep.serving.backend import ModelNotFound, Unavailable
from agentsleep.serving.vllm import Route, Server, SharedBaseVLLM, VLLMSupervisor
from agentsleep.serving.vllm.restarts import RestartPolicy, restart_server
from agentsleep.serving.vllm.routing import Gate


class FakeProc:
    """Stands for a VLLMProcess: alive until killed."""

    def __init__(self) -> None:
        self.dead = False
        self.stopped = False
        self.log_path = Path("vllm.log")
        self.pid = 12345
        self.staged_reload = False

    def alive(self) -> bool:
        return not self.dead

    @property
    def returncode(self) -> int | None:
        return -9 if self.dead else None

    def stop(self, grace: float = 15.0) -> None:
        self.stopped = True
        self.dead = True


def version(name: str) -> Version:
    return Version(name, Path("/nonexistent") / name, {"parent": None})


def server(proc: FakeProc | None = None) -> Server:
    return Server("http://127.0.0.1:1", None, proc, None, None, None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_restart_policy_counts_deaths_in_a_window():
    clock = Clock()
    policy = RestartPolicy(max_restarts=2, window_s=60, clock=clock)
    assert policy.died() == 1 and policy.may_restart() and not policy.last_try()
    clock.now += 10
    assert policy.died() == 2 and policy.may_restart() and policy.last_try()
    clock.now += 10
    assert policy.died() == 3 and not policy.may_restart()  # three deaths in 60 s: give up
    clock.now += 61
    assert policy.recent == 0 and policy.may_restart()        # old deaths age out of the window
    assert policy.died() == 1 and policy.may_restart()


def test_gate_lease_release_pin_and_drain():
    gate = Gate("the vLLM backend")
    srv = server()
    route = Route(srv, "m", version("v0001"))
    current = [None]
    with pytest.raises(Unavailable, match="the vLLM backend is stopped; retry shortly"):
        gate.lease(lambda: current[0], timeout=0.05)
    gate.set(state="starting")

    def open_later() -> None:
        time.sleep(0.1)
        with gate.cond:
            current[0] = route
            gate.set(state="ready")

    threading.Thread(target=open_later).start()
    got = gate.lease(lambda: current[0], timeout=5)   # waits for the start instead of failing
    assert got is route and route.inflight == 1 and srv.inflight == 1
    assert not gate.drain(srv, timeout=0.05)
    gate.release(got)
    assert route.inflight == 0 and srv.inflight == 0 and gate.drain(srv, timeout=0.05)
    with gate.acquire(lambda: current[0], pin="v0001") as r:
        assert r.inflight == 1
    with pytest.raises(ModelNotFound, match=r"no longer served \(now v0001\); ask for 'agentsleep'"):
        gate.lease(lambda: current[0], pin="v0000")
    with pytest.raises(ModelNotFound, match=r"no longer served for alice \(now v0001\)$"):
        gate.lease(lambda: current[0], pin="v0000", home="alice")
    gate.set(held=True)                                   # a reload holds new requests
    with pytest.raises(Unavailable, match="home alice: the vLLM backend is ready"):
        gate.lease(lambda: current[0], timeout=0.05, home="alice")
    gate.set(held=False)
    with pytest.raises(Unavailable, match="home bob is not served: grown"):
        gate.lease(lambda: None, unserved=lambda: "home bob is not served: grown")
    gate.set(state="failed", error="it broke")
    with pytest.raises(Unavailable, match="the vLLM backend failed: it broke"):
        gate.lease(lambda: current[0])
    gate.set(closed=True)
    with pytest.raises(Unavailable, match="shut down"):
        gate.lease(lambda: current[0])


def test_gate_recover_waits_for_the_new_server():
    gate = Gate("the vLLM backend")
    gate.set(state="ready")
    attached = Route(server(None), "m", version("v0001"))
    assert gate.recover(attached, lambda: attached, wake=lambda: None) is False  # nobody restarts it
    live = Route(server(FakeProc()), "m", version("v0001"))
    assert gate.recover(live, lambda: live, wake=lambda: None, probe=lambda s: True) is True  # transient
    proc = FakeProc()
    proc.dead = True
    dead = Route(server(proc), "m", version("v0001"))
    current = [dead]
    woken = threading.Event()

    def restart() -> None:
        woken.wait(5)
        with gate.cond:
            current[0] = Route(server(FakeProc()), "m", version("v0001"))
            gate.cond.notify_all()

    threading.Thread(target=restart).start()
    assert gate.recover(dead, lambda: current[0], wake=woken.set, timeout=10) is True
    current[0] = dead
    gate.set(state="failed")
    assert gate.recover(dead, lambda: current[0], wake=lambda: None, timeout=10) is False


def test_restart_server_gives_up_after_too_many_deaths_in_the_window():
    gate, clock, events = Gate("x"), Clock(), []
    gate.set(state="ready")
    policy = RestartPolicy(max_restarts=1, window_s=60, clock=clock)
    installed = []

    def run(spawn):
        proc = FakeProc()
        proc.dead = True
        return restart_server(server(proc), gate=gate, policy=policy, spawn=spawn, install=installed.append,
                              event=lambda what, **kw: events.append(what), wake=lambda: None)

    new = run(lambda: server(FakeProc()))
    assert new is not None and installed == [new] and gate.state == "ready" and gate.error is None
    assert events == ["died", "restarted"]
    assert run(lambda: server(FakeProc())) is None and gate.state == "failed"   # second death within 60 s
    assert "died 2 times in 60 s" in gate.error and events[-1] == "gave_up"
    gate.set(state="ready")
    clock.now += 120                                       # the earlier deaths are old now
    assert run(lambda: server(FakeProc())) is not None and gate.state == "ready"

    def broken() -> Server:
        raise RuntimeError("no memory\nmore")

    clock.now += 120
    assert run(broken) is None and gate.state == "failed"       # its last try in the window failed
    assert gate.error == "restart failed: no memory" and events[-1] == "restart_failed"
    policy.max_restarts = 3
    gate.set(state="ready")
    clock.now += 120
    assert run(broken) is None and gate.state == "restarting"   # tries left: the monitor tries again


def test_supervisor_and_lanes_share_the_gate_and_the_restart_policy(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    sup = VLLMSupervisor(max_restarts=3, restart_window_s=30)
    pool = SharedBaseVLLM(tmp_path, max_restarts=3, restart_window_s=30)
    try:
        assert type(sup.gate) is type(pool.gate) is Gate
        assert (sup.restart_policy.max_restarts, sup.restart_policy.window_s) == (3, 30)
        assert (pool.restart_policy.max_restarts, pool.restart_policy.window_s) == (3, 30)
        v1 = version("v0001")
        # the supervisor: a dead managed server is restarted on the version it served
        proc = FakeProc()
        with sup.gate.cond:
            sup._route = Route(server(proc), "agentsleep-base", v1)
            sup.gate.set(state="ready")
        with sup.acquire() as r:
            assert r.version is v1
        proc.dead = True
        fresh = server(FakeProc())
        sup._spawn = lambda version, **kw: fresh
        assert sup._dead_route() is not None
        sup._restart(sup._route)
        assert sup.route.server is fresh and sup.restarts == 1 and sup.health(probe=False)["ready"]
        assert [e["event"] for e in sup.events] == ["died", "restarted"] and proc.stopped
        # the lanes: the pool's server is restarted and each lane routes to the new one
        lane = pool.lane("alice")
        pool_proc = FakeProc()
        with pool.gate.cond:
            pool.server = server(pool_proc)
            lane.route = Route(pool.server, "agentsleep-base", v1)
            pool.gate.set(state="ready")
        assert lane.lease() is lane.route and lane.route.inflight == 1
        lane.release(lane.route)
        pool_proc.dead = True
        new_srv = server(FakeProc())
        pool._spawn = lambda: new_srv
        pool.adapter_for = lambda home, version: None  # the base itself: nothing to load
        pool._restart(pool._dead_server())
        assert pool.server is new_srv and lane.route.server is new_srv and pool.restarts == 1
        assert pool.health()["ready"] and pool.restart_policy.recent == 1
    finally:
        sup.close()
        pool.close()
