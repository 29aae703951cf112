"""Lease leader election (`kubeforge.leader`) against an in-memory Lease store."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from kubeforge.apply import ApiError
from kubeforge.leader import LeaderElection


class _Leases:
    """One Lease, with resourceVersion preconditions as the API server checks them."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.down = False

    async def get(self, *_: Any) -> Any:
        if self.down:
            raise ConnectionError("apiserver down")
        return copy.deepcopy(self.lease)

    async def create(self, obj: Any, **_: Any) -> Any:
        if self.lease is not None:
            raise ApiError(409, "AlreadyExists")
        self.rv += 1
        self.lease = copy.deepcopy(obj)
        self.lease["metadata"]["resourceVersion"] = str(self.rv)
        return {}

    async def patch(self, *args: Any, **_: Any) -> Any:
        patch = args[4]
        assert self.lease is not None
        if patch["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict")
        self.rv += 1
        self.lease["spec"].update(patch["spec"])
        self.lease["metadata"]["resourceVersion"] = str(self.rv)
        return {}


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _candidate(store: _Leases, clock: _Clock, name: str, log: list[str]) -> LeaderElection:
    return LeaderElection(
        store,  # type: ignore[arg-type]
        "ops",
        "kubeforge",
        identity=name,
        lease_seconds=15,
        renew_seconds=4,
        on_start=lambda: log.append(f"{name}+"),
        on_stop=lambda: log.append(f"{name}-"),
        clock=clock,
    )


def test_one_leader_and_takeover_after_the_lease_expires() -> None:
    store, clock, log = _Leases(), _Clock(), []
    a, b = _candidate(store, clock, "a", log), _candidate(store, clock, "b", log)

    async def run() -> None:
        await a.step()
        await b.step()
        assert a.leading and not b.leading
        for _ in range(5):  # a renews: b never takes over
            clock.t += 4
            await a.step()
            await b.step()
        assert a.leading and not b.leading
        # a dies (stops renewing): b waits a whole lease by its own clock, then takes over
        clock.t += 10
        await b.step()
        assert not b.leading
        clock.t += 6
        await b.step()
        assert b.leading
        assert store.lease is not None and store.lease["spec"]["leaseTransitions"] == 1
        # a comes back: it sees b's lease and steps down
        await a.step()
        assert not a.leading

    asyncio.run(run())
    assert log == ["a+", "b+", "a-"]


def test_a_leader_that_cannot_renew_steps_down_before_a_standby_may_start() -> None:
    store, clock, log = _Leases(), _Clock(), []
    a = _candidate(store, clock, "a", log)

    async def run() -> None:
        await a.step()
        store.down = True
        clock.t += 9
        a._check_expiry()
        assert a.leading
        clock.t += 2  # 11 s > two thirds of 15 s: steps down, 4 s before anyone may take over
        a._check_expiry()
        assert not a.leading

    asyncio.run(run())
    assert log == ["a+", "a-"]


def test_a_released_lease_is_taken_at_once() -> None:
    store, clock, log = _Leases(), _Clock(), []
    a, b = _candidate(store, clock, "a", log), _candidate(store, clock, "b", log)

    async def run() -> None:
        await a.step()
        await b.step()
        a.leading = False
        await a._release()
        await b.step()
        assert b.leading

    asyncio.run(run())


def test_a_paused_controller_reconciles_nothing_until_resumed() -> None:
    from kubeforge.controller import Controller

    ran: list[tuple[str, str]] = []
    forgotten: list[tuple[str, str]] = []

    async def reconcile(key: tuple[str, str], snap: str) -> None:
        ran.append(key)

    async def run() -> None:
        ctl: Controller[str] = Controller(
            "T", snapshot=lambda k: "s", reconcile=reconcile, workers=2, forget=forgotten.append
        )
        ctl.start(paused=True)
        ctl.enqueue(("ns", "a"))
        await asyncio.sleep(0.05)
        assert ran == [] and ctl.alive
        ctl.resume([("ns", "a"), ("ns", "b")])
        await asyncio.sleep(0.05)
        assert sorted(ran) == [("ns", "a"), ("ns", "b")]
        assert sorted(forgotten) == [("ns", "a"), ("ns", "b")]  # memory of another term dropped
        ctl.pause()
        ctl.enqueue(("ns", "c"))
        await asyncio.sleep(0.05)
        assert ("ns", "c") not in ran
        ctl.resume()
        await asyncio.sleep(0.05)
        assert ("ns", "c") in ran
        await ctl.stop()
        assert not ctl.alive

    asyncio.run(run())
