"""Readiness (`kubeforge.health`): a resource that cannot be listed is named, and only it."""

from __future__ import annotations

import asyncio
from typing import Any

from kubeforge.apply import ApiError
from kubeforge.health import Readiness, list_path
from kubeforge.metrics import WATCH_LIST_FAILURES

PODS = ("", "v1", "pods")
JOBS = ("batch", "v1", "jobs")


class _Api:
    def __init__(self) -> None:
        self.forbidden: set[str] = set()
        self.paths: list[str] = []

    async def request(self, method: str, path: str, **_: Any) -> Any:
        self.paths.append(path)
        if path in self.forbidden:
            raise ApiError(403, "Forbidden", {"message": f"cannot list {path}"})
        return {"items": []}


def test_a_forbidden_list_names_the_resource_backs_off_and_recovers() -> None:
    api = _Api()
    r = Readiness(api, [PODS, JOBS], period=30)  # type: ignore[arg-type]
    r.started = True
    api.forbidden.add(list_path(PODS, None))
    before = WATCH_LIST_FAILURES.labels("pods")._value.get()

    async def run() -> None:
        assert await r.check(JOBS) == 30
        first = await r.check(PODS)
        second = await r.check(PODS)
        assert 0 < first < second <= 60  # backoff
        ready, body = r.state()
        assert not ready and list(body["notListable"]) == ["pods"]
        assert "403" in body["notListable"]["pods"]
        api.forbidden.clear()
        assert await r.check(PODS) == 30
        assert r.state()[0]

    asyncio.run(run())
    assert WATCH_LIST_FAILURES.labels("pods")._value.get() == before + 2


def test_not_ready_before_start_and_namespaced_paths() -> None:
    r = Readiness(_Api(), [PODS], namespaces=("a",))  # type: ignore[arg-type]
    assert r.state()[0] is False
    assert list_path(PODS, "a") == "/api/v1/namespaces/a/pods"
    assert list_path(JOBS, None) == "/apis/batch/v1/jobs"


def test_restart_when_a_left_out_resource_lists_again_or_a_running_one_stops() -> None:
    api = _Api()
    restarts: list[int] = []
    r = Readiness(api, [PODS, JOBS], left_out=frozenset({PODS}), restart=lambda: restarts.append(1))  # type: ignore[arg-type]

    async def run() -> None:
        await r.check(PODS)  # listable again: this run left it out, so run kopf again
        assert restarts == [1]

    asyncio.run(run())

    restarts.clear()
    r = Readiness(api, [PODS, JOBS], restart=lambda: restarts.append(1))  # type: ignore[arg-type]
    api.forbidden.add(list_path(JOBS, None))

    async def run2() -> None:
        await r.check(JOBS)
        assert restarts == []  # one refusal may be a blip (API server upgrades answer 403)
        await r.check(JOBS)
        await r.check(JOBS)
        assert restarts == [1]  # once

    asyncio.run(run2())
