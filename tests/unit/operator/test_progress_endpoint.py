"""The progress endpoint: its decisions (pure), and the HTTP surface (413, 429, 401/403, the stop
answer) against an in-memory API server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from kf_operator_helpers import SETTINGS, parsed, tj, with_spec
from kubeforge.pod import restricted_violations
from kubeforge.progress import ProgressReports, auth
from kubeforge.progress.pod import TOKEN_DIR, progress_pod_parts
from kubeforge.progress.server import REFUSALS, ProgressEndpoint, TokenBuckets
from kubeforge.trainingjob.build import build

AUD = SETTINGS.progress_audience
JOB_UID, TJ_UID, POD_UID = "job-uid", "uid-1", "pod-uid"


def review(pod: str = "digits-0-x", uid: str = POD_UID, ns: str = "ml", **over: Any) -> dict[str, Any]:
    status = {
        "authenticated": True,
        "audiences": [AUD],
        "user": {
            "username": f"system:serviceaccount:{ns}:default",
            "extra": {auth.POD_NAME_CLAIM: [pod], auth.POD_UID_CLAIM: [uid]},
        },
    }
    status.update(over)
    return status


def the_job(owner_uid: str = TJ_UID) -> dict[str, Any]:
    return {"metadata": {"name": "digits", "uid": JOB_UID,
                         "ownerReferences": [{"kind": "TrainingJob", "uid": owner_uid, "controller": True}]}}


def the_pod(uid: str = POD_UID, job_uid: str = JOB_UID, index: str = "0") -> dict[str, Any]:
    return {"metadata": {"name": "digits-0-x", "namespace": "ml", "uid": uid,
                         "labels": {"batch.kubernetes.io/job-completion-index": index},
                         "ownerReferences": [{"kind": "Job", "uid": job_uid, "controller": True}]}}


# --- the decisions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        ({"authenticated": False, "error": "[invalid bearer token, service account token has expired]"}, 401, auth.EXPIRED),
        ({"authenticated": False, "error": "token audiences [\"api\"] is invalid for the target audiences"}, 401, auth.WRONG_AUDIENCE),
        ({"authenticated": False, "error": "invalid bearer token"}, 401, auth.INVALID_TOKEN),
        (review(audiences=["other"]), 401, auth.WRONG_AUDIENCE),
        (review(user={"username": "alice", "extra": {}}), 403, auth.NOT_A_POD_TOKEN),
        (review(user={"username": "system:serviceaccount:ml:default", "extra": {}}), 403, auth.NOT_A_POD_TOKEN),
    ],
)
def test_token_review_answers_that_refuse(status: dict[str, Any], code: int, reason: str) -> None:
    got = auth.caller_of(status, AUD)
    assert isinstance(got, auth.Refusal) and (got.status, got.reason) == (code, reason)


def test_a_bound_pod_token_names_its_pod() -> None:
    assert auth.caller_of(review(), AUD) == auth.Caller("ml", "default", "digits-0-x", POD_UID)


@pytest.mark.parametrize(
    ("caller_ns", "tj_obj", "job", "pod", "reason"),
    [
        ("other", tj(), the_job(), the_pod(), auth.OTHER_NAMESPACE),
        ("ml", None, None, the_pod(), auth.UNKNOWN_TRAININGJOB),
        ("ml", tj(), the_job(), None, auth.POD_GONE),
        ("ml", tj(), the_job(), the_pod(uid="recreated"), auth.POD_GONE),
        ("ml", tj(), the_job(), the_pod(job_uid="another-job"), auth.OTHER_TRAININGJOB),
        ("ml", tj(), the_job(owner_uid="another-tj"), the_pod(), auth.OTHER_TRAININGJOB),
    ],
)
def test_only_a_pod_of_the_trainingjobs_own_job_may_report(
    caller_ns: str, tj_obj: Any, job: Any, pod: Any, reason: str
) -> None:
    caller = auth.Caller(caller_ns, "default", "digits-0-x", POD_UID)
    got = auth.authorize(caller, "ml", "digits", tj_obj, job, pod)
    assert got is not None and (got.status, got.reason) == (403, reason)
    ok = auth.authorize(auth.Caller("ml", "default", "digits-0-x", POD_UID), "ml", "digits", tj(), the_job(), the_pod())
    assert ok is None


def test_bearer_token_parsing() -> None:
    assert auth.bearer_token("Bearer abc") == "abc"
    assert auth.bearer_token("bearer  abc ") == "abc"
    assert auth.bearer_token("Basic abc") is None
    assert auth.bearer_token(None) is None


def test_token_buckets_allow_a_burst_then_the_rate() -> None:
    now = [0.0]
    b = TokenBuckets(rate=2.0, burst=3.0, clock=lambda: now[0])
    assert [b.allow("a") for _ in range(4)] == [True, True, True, False]
    assert b.allow("b")  # per key
    now[0] = 0.5  # one more token
    assert b.allow("a") and not b.allow("a")


def test_training_pods_get_the_projected_token_and_no_api_token() -> None:
    s = SETTINGS.__class__(**{**SETTINGS.__dict__, "progress_url": "https://kf-progress.kf.svc:8443"})
    obj = tj(with_spec())
    pod = build(obj, parsed(obj), s).job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (vol,) = [v for v in pod["volumes"] if "projected" in v]
    token = vol["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"audience": "kubeforge.io/progress", "expirationSeconds": 600, "path": "token"}
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KUBEFORGE_PROGRESS_URL"] == "https://kf-progress.kf.svc:8443/v1/namespaces/ml/trainingjobs/digits/progress"
    assert env["KUBEFORGE_PROGRESS_TOKEN_FILE"] == f"{TOKEN_DIR}/token"
    assert {"name": vol["name"], "mountPath": TOKEN_DIR, "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert restricted_violations(pod) == []  # a projected token keeps Pod Security restricted
    # without a URL (no endpoint configured) nothing is added
    assert progress_pod_parts(SETTINGS, "ml", "digits").volumes == []


# --- the HTTP surface ------------------------------------------------------------------------


class FakeApi:
    """TokenReviews answered from a table (token → status); the pod from a dict."""

    def __init__(self) -> None:
        self.reviews: dict[str, dict[str, Any]] = {"good": review()}
        self.pods: dict[str, dict[str, Any]] = {"digits-0-x": the_pod()}
        self.calls: list[str] = []

    async def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> dict[str, Any]:
        self.calls.append(path)
        token = body["spec"]["token"]
        assert body["spec"]["audiences"] == [AUD]
        return {"status": self.reviews.get(token, {"authenticated": False, "error": "invalid bearer token"})}

    async def get(self, api_version: str, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        self.calls.append(f"{kind}/{name}")
        return self.pods.get(name)


Run = Callable[[TestClient, FakeApi, ProgressReports], Awaitable[None]]


def serve(
    test: Run, stop: str | None = None, leading: bool = True, **settings: Any
) -> ProgressReports:
    reports = ProgressReports()
    trainingjob = tj()
    if stop:
        trainingjob["metadata"]["annotations"] = {"kubeforge.io/stop": stop}
    reports.lookup = lambda ns, name: (trainingjob, the_job()) if (ns, name) == ("ml", "digits") else (None, None)
    api = FakeApi()
    s = SETTINGS.__class__(**{**SETTINGS.__dict__, **settings})

    async def main() -> None:
        endpoint = ProgressEndpoint(api, s, reports, reports.lookup, leading=lambda: leading)
        async with TestClient(TestServer(endpoint.app())) as client:
            await test(client, api, reports)

    asyncio.run(main())
    return reports


URL = "/v1/namespaces/ml/trainingjobs/digits/progress"
REPORT = {"seq": 1, "step": 4, "epoch": 2, "metrics": {"loss": 0.25}, "time": 1.0}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refused(reason: str) -> float:
    return REFUSALS.labels(reason).value


def test_an_accepted_report_is_recorded_and_answered() -> None:
    async def run(client: TestClient, api: FakeApi, reports: ProgressReports) -> None:
        woken: list[Any] = []
        reports.on_report = woken.append
        r = await client.post(URL, json=REPORT, headers=bearer("good"))
        assert r.status == 200 and await r.json() == {"accepted": True, "stop": None}
        assert reports.latest(("ml", "digits")) == {"step": 4, "epoch": 2, "metrics": {"loss": 0.25}}
        assert woken == [("ml", "digits")]
        # the second report of that token costs no API call (review and pod remembered)
        n = len(api.calls)
        r = await client.post(URL, json={**REPORT, "seq": 2, "time": 2.0}, headers=bearer("good"))
        assert r.status == 200 and len(api.calls) == n

    serve(run)


def test_the_answer_carries_the_trainingjobs_stop_request() -> None:
    async def run(client: TestClient, api: FakeApi, reports: ProgressReports) -> None:
        r = await client.post(URL, json=REPORT, headers=bearer("good"))
        assert (await r.json())["stop"] == "pruned"

    serve(run, stop="pruned")


def test_a_standby_replica_answers_503_and_keeps_nothing() -> None:
    # with replicas: 2 only the Lease holder writes statuses: a report kept by the standby would
    # never arrive, so the trainer is told to send it again (and keeps it pending)
    async def run(client: TestClient, api: FakeApi, reports: ProgressReports) -> None:
        before = refused("not-leader")
        r = await client.post(URL, json=REPORT, headers=bearer("good"))
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert (await r.json())["reason"] == "not-leader"
        assert api.calls == [] and reports.latest(("ml", "digits")) is None
        assert refused("not-leader") == before + 1

    serve(run, leading=False)


def test_a_megabyte_body_is_refused_with_413_before_any_api_call() -> None:
    async def run(client: TestClient, api: FakeApi, reports: ProgressReports) -> None:
        before = refused("too-large")
        big = json.dumps({"metrics": {"x": 1}, "pad": "x" * 1_000_000})
        r = await client.post(URL, data=big, headers={**bearer("good"), "Content-Type": "application/json"})
        assert r.status == 413 and (await r.json())["reason"] == "too-large"
        assert api.calls == [] and refused("too-large") == before + 1
        assert reports.latest(("ml", "digits")) is None

    serve(run)


def test_reports_beyond_the_rate_get_429_without_a_token_review() -> None:
    async def run(client: TestClient, api: FakeApi, reports: ProgressReports) -> None:
        codes = [(await client.post(URL, json=REPORT, headers=bearer("good"))).status for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        assert api.calls.count("/apis/authentication.k8s.io/v1/tokenreviews") == 1

    serve(run, progress_burst=3.0, progress_rate=0.001)


@pytest.mark.parametrize(
    ("token", "url", "code", "reason"),
    [
        (None, URL, 401, auth.NO_TOKEN),
        ("forged", URL, 401, auth.INVALID_TOKEN),
        ("good", "/v1/namespaces/ml/trainingjobs/other/progress", 403, auth.UNKNOWN_TRAININGJOB),
        ("good", "/v1/namespaces/team-b/trainingjobs/digits/progress", 403, auth.OTHER_NAMESPACE),
    ],
)
def test_refusals_are_answered_and_counted(token: str | None, url: str, code: int, reason: str) -> None:
    async def run(client: TestClient, api: FakeApi, reports: ProgressReports) -> None:
        before = refused(reason)
        r = await client.post(url, json=REPORT, headers=bearer(token) if token else {})
        assert r.status == code and (await r.json())["reason"] == reason
        assert refused(reason) == before + 1
        assert reports.latest(("ml", "digits")) is None

    serve(run)


def test_a_body_that_is_not_a_report_is_400() -> None:
    async def run(client: TestClient, api: FakeApi, reports: ProgressReports) -> None:
        r = await client.post(URL, data=b"[1, 2]", headers=bearer("good"))
        assert r.status == 400

    serve(run)


def test_other_ranks_are_accepted_but_rank_0_speaks_for_the_job() -> None:
    reports = ProgressReports()
    assert not reports.record(("ml", "t"), REPORT, 1)
    assert reports.record(("ml", "t"), REPORT, 0)
    first = reports.latest(("ml", "t"))
    assert not reports.record(("ml", "t"), {**REPORT, "time": 0.5, "step": 1}, 0)  # older: dropped
    assert reports.latest(("ml", "t")) is first


def test_start_up_deletes_the_old_progress_grants_by_label() -> None:
    from kubeforge.progress.legacy import legacy_selector, remove_legacy_rbac

    class ListingApi:
        def __init__(self) -> None:
            self.calls: list[tuple[str, str, Any]] = []

        async def request(self, method: str, path: str, *, query: Any = None, **_: Any) -> dict[str, Any]:
            self.calls.append((method, path, query))
            if method == "GET":
                kind = path.rsplit("/", 1)[1]
                return {"items": [{"metadata": {"namespace": "ml", "name": f"kubeforge-progress-{kind}"}}]}
            return {}

    api = ListingApi()
    assert asyncio.run(remove_legacy_rbac(api, SETTINGS)) == 2
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    assert api.calls == [
        ("GET", f"{rbac}/rolebindings", {"labelSelector": legacy_selector(SETTINGS)}),
        ("DELETE", f"{rbac}/namespaces/ml/rolebindings/kubeforge-progress-rolebindings", None),
        ("GET", f"{rbac}/roles", {"labelSelector": legacy_selector(SETTINGS)}),
        ("DELETE", f"{rbac}/namespaces/ml/roles/kubeforge-progress-roles", None),
    ]
    assert legacy_selector(SETTINGS) == "app.kubernetes.io/managed-by=kubeforge,kubeforge.io/component=progress"
