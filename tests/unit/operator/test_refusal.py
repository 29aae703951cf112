"""Can this refusal heal? The classification, the Failed status built from an ApiError, and the
guard every kind's reconcile runs under (issue 18: every object gets an answer)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubeforge import refusal
from kubeforge.apply import ApiError
from kubeforge.refusal import InvalidSpecError, RefusalGuard, Verdict, classify

JOB_422 = ApiError(422, "Unprocessable Entity", {
    "kind": "Status", "status": "Failure", "reason": "Invalid",
    "message": 'Job.batch "digits" is invalid: spec.template.spec.containers[0].resources.'
               'limits[cpu]: Invalid value: "-1": must be greater than or equal to 0',
    "details": {"name": "digits", "group": "batch", "kind": "Job", "causes": [
        {"reason": "FieldValueInvalid", "message": 'Invalid value: "-1"',
         "field": "spec.template.spec.containers[0].resources.limits[cpu]"}]},
})
TERMINATING = ApiError(403, "Forbidden", {
    "reason": "Forbidden",
    "message": 'jobs.batch "digits" is forbidden: unable to create new content in namespace ml '
               "because it is being terminated",
    "details": {"name": "digits", "group": "batch", "kind": "jobs", "causes": [
        {"reason": "NamespaceTerminating", "message": "namespace ml is being terminated",
         "field": "metadata.namespace"}]},
})


RBAC_DENIED = (
    'jobs.batch is forbidden: User "system:serviceaccount:kubeforge-system:kubeforge-operator" '
    'cannot create resource "jobs" in API group "batch" in the namespace "ml"'
)
VAP_DENIED = (
    'jobs.batch "digits" is forbidden: ValidatingAdmissionPolicy \'deny\' with binding '
    "'deny' denied request: team blocked may not run jobs"
)
ESCALATION = (
    'rolebindings.rbac.authorization.k8s.io "x" is forbidden: user "system:serviceaccount:k:op" '
    '(groups=["system:serviceaccounts"]) is attempting to grant RBAC permissions not currently '
    "held"
)


@pytest.mark.parametrize(("exc", "verdict"), [
    (JOB_422, Verdict.PERMANENT),
    (ApiError(400, "Bad Request", {"message": "bad"}), Verdict.PERMANENT),
    # the operator's own RBAC: heals (chart fixed; an API server's authorizer right after start)
    (ApiError(403, "Forbidden", {"message": RBAC_DENIED}), Verdict.TRANSIENT),
    # admission refusing the child: the spec's doing, for good
    (ApiError(403, "Forbidden", {"message": VAP_DENIED}), Verdict.PERMANENT),
    (ApiError(403, "Forbidden", {"message": 'pods "x" is forbidden: violates PodSecurity '
                                            '"restricted:latest": privileged'}), Verdict.PERMANENT),
    (ApiError(403, "Forbidden", {"message": ESCALATION}), Verdict.PERMANENT),
    (ApiError(413, "Request Entity Too Large"), Verdict.PERMANENT),
    (TERMINATING, Verdict.NAMESPACE_GONE),
    (ApiError(404, "Not Found", {"message": 'namespaces "ml" not found'}), Verdict.NAMESPACE_GONE),
    (ApiError(403, "Forbidden", {"message": 'pods "x" is forbidden: exceeded quota: q'}),
     Verdict.TRANSIENT),
    (ApiError(500, "Internal Server Error"), Verdict.TRANSIENT),
    (ApiError(500, "Internal Server Error", {"message": "etcdserver: request is too large"}),
     Verdict.PERMANENT),
    (ApiError(503, "Service Unavailable"), Verdict.TRANSIENT),
    (ApiError(429, "Too Many Requests"), Verdict.TRANSIENT),
    (ApiError(409, "Conflict"), Verdict.TRANSIENT),
    (TimeoutError(), Verdict.TRANSIENT),
    (ConnectionResetError(), Verdict.TRANSIENT),
    (InvalidSpecError("spec.algorithm.settings", "no"), Verdict.PERMANENT),
    (KeyError("bug"), None),
])
def test_classify(exc: BaseException, verdict: Verdict | None) -> None:
    assert classify(exc) is verdict


@pytest.mark.parametrize(("child_field", "kind", "parent"), [
    ("spec.template.spec.containers[0].resources.limits[cpu]", "TrainingJob", "spec.resources"),
    ("spec.template.metadata.labels", "TrainingJob", "spec.pod.labels"),
    ("spec.template.spec.affinity.nodeAffinity", "ModelDeployment", "spec.scheduling.affinity"),
    ("spec.template.spec.serviceAccountName", "ModelDeployment", "spec.pod.serviceAccountName"),
    ("subjects[0].name", "TrainingJob", "spec.pod.serviceAccountName"),
    ("metadata.labels[kueue.x-k8s.io/queue-name]", "TrainingJob", "spec.scheduling.queueName"),
    ("spec.resources.cpu", "TuningStudy", "spec.trialTemplate.spec.resources.cpu"),
    ("something.else", "TrainingJob", "spec"),
])
def test_parent_field(child_field: str, kind: str, parent: str) -> None:
    exc = ApiError(422, "Unprocessable Entity",
                   {"message": "x", "details": {"causes": [{"field": child_field}]}})
    assert refusal.parent_field(exc, kind) == parent


def test_parent_field_from_the_message_when_no_causes() -> None:
    exc = ApiError(422, "Invalid", {"message": 'TrainingJob "t" is invalid: spec.pod.labels: bad'})
    assert refusal.parent_field(exc, "TuningStudy") == "spec.trialTemplate.spec.pod.labels"


def _obj(generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "digits", "namespace": "ml", "uid": "u1",
                         "generation": generation}, "status": {"phase": "Pending"}}


def test_refused_status_names_the_field_and_the_api_servers_words() -> None:
    st = refusal.refused_status(_obj(), JOB_422, "TrainingJob", "2026-01-01T00:00:00Z")
    assert st["phase"] == "Failed"
    assert st["message"].startswith("spec.resources: the API server refused Job 'digits' (422")
    assert 'limits[cpu]: Invalid value: "-1"' in st["message"]
    (cond,) = st["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Failed", "True", "InvalidSpec")
    assert st["observedGeneration"] == 1
    other = refusal.refused_status(_obj(), ApiError(413, "Request Entity Too Large"),
                                   "ModelDeployment", "t", condition="Ready")
    assert other["conditions"][0]["reason"] == "ChildRejected"
    assert other["conditions"][0]["status"] == "False"


class Writer:
    """A handler's status writer (with its memory of what it wrote)."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.status: dict[str, Any] = {"phase": "Pending"}
        self.writes: list[dict[str, Any]] = []
        self.fail = fail

    async def amend(self, change: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.status = change(self.status)
        self.writes.append(self.status)


def _run(guard: RefusalGuard, obj: dict[str, Any], exc: BaseException | None, w: Writer) -> Any:
    async def reconcile() -> str:
        if exc is not None:
            raise exc
        return "ok"

    return asyncio.run(guard.run(("ml", "digits"), obj, reconcile, w.amend))


def test_permanent_refusal_fails_once_and_never_retries_the_generation() -> None:
    guard, w = RefusalGuard("TrainingJob"), Writer()
    assert _run(guard, _obj(), JOB_422, w) is None  # no raise: no backoff loop
    assert [s["phase"] for s in w.writes] == ["Failed"]
    assert guard.holds(("ml", "digits"), _obj())
    assert not guard.holds(("ml", "digits"), _obj(generation=2))  # a new spec: try again
    guard.forget(("ml", "digits"))
    assert not guard.holds(("ml", "digits"), _obj())


def test_transient_errors_retry_and_show_a_condition_after_a_few_then_clear() -> None:
    guard, w = RefusalGuard("TrainingJob", attempts_before_condition=3), Writer()
    for _ in range(3):
        with pytest.raises(ApiError):
            _run(guard, _obj(), ApiError(503, "Service Unavailable"), w)
    assert len(w.writes) == 1
    cond = w.status["conditions"][0]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Synced", "False", "ApiServerError")
    assert "3 failed attempts" in cond["message"]
    assert not guard.holds(("ml", "digits"), _obj())
    assert _run(guard, _obj(), None, w) == "ok"
    assert w.status["conditions"][0]["status"] == "True"
    assert _run(guard, _obj(), None, w) == "ok"
    assert len(w.writes) == 2  # healed once, nothing more


def test_the_operators_own_rbac_denial_is_retried_and_named_not_the_objects_end() -> None:
    """A 403 from the authorizer (the operator may not create Jobs: RBAC being mended, or an API
    server just restarted) keeps the object alive: retried, Synced=False OperatorForbidden with
    the API server's words, never phase Failed; healed, Synced=True."""
    guard, w = RefusalGuard("TrainingJob", attempts_before_condition=3), Writer()
    denied = ApiError(403, "Forbidden", {"message": RBAC_DENIED})
    for _ in range(3):
        with pytest.raises(ApiError):
            _run(guard, _obj(), denied, w)
    cond = w.status["conditions"][0]
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "Synced", "False", "OperatorForbidden")
    assert 'cannot create resource "jobs"' in cond["message"]
    assert w.status["phase"] == "Pending" and not guard.holds(("ml", "digits"), _obj())
    assert _run(guard, _obj(), None, w) == "ok"
    assert w.status["conditions"][0]["status"] == "True"


def test_terminating_namespace_stops_work_in_it_quietly(caplog: pytest.LogCaptureFixture) -> None:
    guard, w = RefusalGuard("TrainingJob"), Writer()
    assert _run(guard, _obj(), TERMINATING, w) is None
    assert w.writes == []
    assert guard.holds(("ml", "digits"), _obj())
    assert guard.holds(("ml", "other"), {"metadata": {"name": "other"}})  # the whole namespace
    assert not guard.holds(("prod", "digits"), _obj())
    assert all(r.exc_info is None for r in caplog.records)  # no traceback


def test_a_failing_status_write_is_logged_and_counted_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = refusal.STATUS_WRITE_FAILURES.labels("TrainingJob", "422").value
    refused_status = ApiError(422, "Unprocessable Entity", {
        "message": 'TrainingJob.kubeforge.io "digits" is invalid: status.bestTrial: bad',
        "details": {"name": "digits", "group": "kubeforge.io", "kind": "TrainingJob"}})
    guard, w = RefusalGuard("TrainingJob"), Writer(fail=refused_status)
    assert _run(guard, _obj(), refused_status, w) is None
    after = refusal.STATUS_WRITE_FAILURES.labels("TrainingJob", "422").value
    assert after == before + 2  # the refused write, and the Failed status that failed too
    assert "not written" in caplog.text and "refused by the API server" in caplog.text


def test_invalid_spec_error_fails_with_invalid_spec() -> None:
    guard, w = RefusalGuard("TuningStudy"), Writer()
    _run(guard, _obj(), InvalidSpecError("spec.earlyStopping.settings", "Optuna refuses"), w)
    assert w.status["phase"] == "Failed"
    assert w.status["message"] == "invalid spec: spec.earlyStopping.settings: Optuna refuses"
    assert w.status["conditions"][0]["reason"] == "InvalidSpec"


def test_bugs_still_propagate() -> None:
    with pytest.raises(KeyError):
        _run(RefusalGuard("TrainingJob"), _obj(), KeyError("x"), Writer())
