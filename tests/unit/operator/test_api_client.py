"""The API client's retry rules (`kubeforge.apply.Kube`) over a scripted transport."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import urllib3
from kubeforge import _kube_client, apply
from kubeforge.apply import ApiConnectionError, ApiError, AsyncKube, Kube, retry_delay

JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "ml"}}


class _Resp:
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        self.status = status
        self._raw = json.dumps(body).encode() if body is not None else b""
        self._headers = headers or {}

    def read(self) -> bytes:
        return self._raw

    def getheaders(self) -> dict[str, str]:
        return self._headers


class _Client:
    """Answers each request with the next scripted response (or raises it)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, str, dict[str, str]]] = []
        self.configuration = object()
        self.user_agent = ""

    def param_serialize(self, method: str, path: str, **kw: Any) -> tuple[Any, ...]:
        return (method, path, kw.get("header_params"), kw.get("body"))

    def call_api(self, method: str, path: str, headers: Any, body: Any, **_: Any) -> _Resp:
        self.sent.append((method, path, headers))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(_kube_client.time, "sleep", slept.append)
    return slept


def test_429_is_retried_after_retry_after_even_for_a_create(_no_sleep: list[float]) -> None:
    client = _Client(_Resp(429, {"message": "slow down"}, {"Retry-After": "2"}), _Resp(201, JOB))
    kube = Kube(client)
    assert kube.create(JOB)["metadata"]["name"] == "j"
    assert [m for m, _, _ in client.sent] == ["POST", "POST"]
    assert 2.0 <= _no_sleep[0] <= 3.0  # the server's wait plus jitter
    assert kube.write_count == 1


def test_a_create_whose_connection_broke_is_not_sent_again() -> None:
    client = _Client(urllib3.exceptions.ProtocolError("connection reset"), _Resp(201, JOB))
    with pytest.raises(ApiConnectionError):
        Kube(client).create(JOB)
    assert len(client.sent) == 1


def test_an_apply_whose_connection_broke_is_sent_again() -> None:
    client = _Client(urllib3.exceptions.ProtocolError("connection reset"), _Resp(200, JOB))
    assert Kube(client).apply(JOB)["kind"] == "Job"
    assert len(client.sent) == 2


def test_a_5xx_retries_only_idempotent_requests() -> None:
    client = _Client(_Resp(500, {"message": "etcd"}), _Resp(201, JOB))
    with pytest.raises(ApiError) as err:
        Kube(client).create(JOB)
    assert err.value.status == 500 and len(client.sent) == 1
    client = _Client(_Resp(503, {"message": "etcd"}), _Resp(200, JOB))
    assert Kube(client).get("batch/v1", "Job", "ml", "j") == JOB


def test_401_reloads_credentials_once() -> None:
    reloads: list[int] = []
    client = _Client(_Resp(401, {"message": "expired"}), _Resp(200, JOB), _Resp(401, {}), _Resp(401, {}))
    kube = Kube(client, reload=lambda: reloads.append(1))
    assert kube.get("batch/v1", "Job", "ml", "j") == JOB and reloads == [1]
    with pytest.raises(ApiError) as err:
        Kube(client, reload=lambda: reloads.append(1)).get("batch/v1", "Job", "ml", "j")
    assert err.value.status == 401 and reloads == [1, 1]


def test_conflict_carries_status_and_the_servers_message() -> None:
    client = _Client(_Resp(409, {"reason": "AlreadyExists", "message": 'jobs "j" already exists'}))
    with pytest.raises(ApiError) as err:
        Kube(client).create(JOB)
    assert err.value.conflict and err.value.status == 409
    assert err.value.message == 'jobs "j" already exists' and err.value.reason == "AlreadyExists"
    assert err.value.__cause__ is not None  # the official client's ApiException


def test_get_of_a_missing_object_is_none_and_throttling_gives_up_eventually() -> None:
    assert Kube(_Client(_Resp(404, {"message": "nope"}))).get("v1", "Pod", "ml", "p") is None
    client = _Client(*[_Resp(429, {})] * apply.MAX_ATTEMPTS)
    with pytest.raises(ApiError) as err:
        Kube(client).get("v1", "Pod", "ml", "p")
    assert err.value.throttled and len(client.sent) == apply.MAX_ATTEMPTS


def test_retry_delay_has_jitter_and_a_cap() -> None:
    delays = {retry_delay(1) for _ in range(20)}
    assert len(delays) > 1 and all(0.5 <= d <= 0.75 for d in delays)
    assert retry_delay(20) <= apply.MAX_WAIT * 1.5
    assert 7.0 <= retry_delay(0, "7") <= 10.5


def test_async_client_runs_the_same_calls() -> None:
    client = _Client(_Resp(200, JOB), _Resp(200, {}))
    akube = AsyncKube(Kube(client))

    async def go() -> None:
        assert (await akube.apply(JOB))["kind"] == "Job"
        await akube.patch_status("batch/v1", "Job", "ml", "j", {"phase": "x"})

    asyncio.run(go())
    akube.close()
    assert [(m, p) for m, p, _ in client.sent] == [
        ("PATCH", "/apis/batch/v1/namespaces/ml/jobs/j"),
        ("PATCH", "/apis/batch/v1/namespaces/ml/jobs/j/status"),
    ]
    assert akube.write_count == 2
