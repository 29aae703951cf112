"""The reconcile against a fake API: what it writes, and that it writes nothing twice."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from kf_operator_helpers import tj, with_spec
from kubeforge.apply import ApiError, resource_path
from kubeforge.context import OperatorContext
from kubeforge.settings import Settings
from kubeforge.trainingjob.indexed import Snapshot, slim_child
from kubeforge.trainingjob.reconcile import TrainingJobReconciler


class FakeKube:
    """The operator's AsyncKube, in memory."""

    field_manager = "kubeforge"

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str, Any]] = []

    @property
    def write_count(self) -> int:
        return len(self.writes)

    def _path(self, obj: dict[str, Any]) -> str:
        m = obj["metadata"]
        return resource_path(obj["apiVersion"], obj["kind"], m.get("namespace"), m["name"])

    async def get(self, api_version: str, kind: str, ns: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get(resource_path(api_version, kind, ns, name))

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        path = self._path(obj)
        if path in self.objects:
            raise ApiError(409, "Conflict")
        self.writes.append(("POST", path, obj))
        stored = copy.deepcopy(obj)
        stored["metadata"]["uid"] = "uid-" + obj["metadata"]["name"]
        self.objects[path] = stored
        return stored

    async def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        path = self._path(obj)
        self.writes.append(("APPLY", path, obj))
        old = self.objects.get(path, {})
        stored = copy.deepcopy(obj)
        stored["metadata"]["uid"] = old.get("metadata", {}).get("uid", "uid-x")
        if "suspend" not in obj.get("spec", {}) and "suspend" in old.get("spec", {}):
            stored["spec"]["suspend"] = old["spec"]["suspend"]  # owned by someone else: kept
        self.objects[path] = stored
        return stored

    async def patch_status(self, api_version: str, kind: str, ns: str, name: str, patch: Any) -> Any:
        self.writes.append(("STATUS", name, patch))
        return {}

    def tj_writes(self) -> list[tuple[str, str, Any]]:
        return [w for w in self.writes if "/roles" not in w[1] and "/rolebindings" not in w[1]
                and "/serviceaccounts" not in w[1] and "/events" not in w[1]]


class Rec:
    """A reconciler driven synchronously (each call runs the coroutine to its end)."""

    def __init__(self, kube: FakeKube) -> None:
        self.inner = TrainingJobReconciler(
            OperatorContext(settings=Settings(), kube=kube, api=kube)  # type: ignore[arg-type]
        )

    def __call__(self, key: tuple[str, str], view: Snapshot) -> None:
        asyncio.run(self.inner(key, view))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def setup(spec: dict[str, Any]) -> tuple[FakeKube, Rec, dict[str, Any]]:
    kube = FakeKube()
    return kube, Rec(kube), tj(spec)


def stored(kube: FakeKube, api_version: str, kind: str, ns: str, name: str) -> Any:
    return kube.objects.get(resource_path(api_version, kind, ns, name))


def snap(obj: dict[str, Any], job: dict[str, Any] | None = None, pods: list[Any] | None = None) -> Snapshot:
    return Snapshot(tj=obj, job=job, pods=pods or [], service=None, workload=None)


def test_two_writes_to_created_then_none() -> None:
    kube, rec, obj = setup(with_spec())
    key = ("ml", "digits")
    rec(key, snap(obj))
    # nothing but the TrainingJob's own children and status: no RBAC, no ServiceAccount
    assert [w for w in kube.writes if w not in kube.tj_writes()] == []
    writes = kube.tj_writes()
    assert [w[0] for w in writes] == ["POST", "STATUS"]
    assert writes[1][2]["phase"] == "Pending"
    # the watch has not caught up yet: same snapshot again → nothing written
    rec(key, snap(obj))
    assert len(kube.tj_writes()) == 2
    # the watch caught up (Job in the index, status written) → still nothing
    live_job = slim_child(stored(kube, "batch/v1", "Job", "ml", "digits"))
    obj2 = {**obj, "status": writes[1][2]}
    rec(key, snap(obj2, live_job))
    assert len(kube.tj_writes()) == 2
    # a fresh operator (restart) with a current view writes nothing either
    kube2 = kube
    Rec(kube2)(key, snap(obj2, live_job))
    assert len(kube.writes) == 2


def test_kueue_flip_is_not_reverted() -> None:
    kube, rec, obj = setup(with_spec(scheduling={"queueName": "team-a"}))
    key = ("ml", "digits")
    rec(key, snap(obj))
    post = kube.tj_writes()[0]
    assert post[0] == "POST" and post[2]["spec"]["suspend"] is True
    live = stored(kube, "batch/v1", "Job", "ml", "digits")
    assert live is not None
    obj["status"] = kube.tj_writes()[1][2]
    st = rec.written_status[key]
    assert st["phase"] == "Queued"
    # Kueue admits: merge-patches suspend=false on the Job; pods start
    live["spec"]["suspend"] = False
    live["status"] = {"active": 1}
    pod = {"metadata": {"name": "p", "annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
           "status": {"phase": "Running", "containerStatuses": []}}
    rec(key, snap(obj, slim_child(live), [pod]))
    writes = kube.tj_writes()
    assert [w[0] for w in writes] == ["POST", "STATUS", "STATUS"]  # no Job write at all
    assert writes[-1][2]["phase"] == "Running"
    assert live["spec"]["suspend"] is False


def test_user_suspend_applies_only_that() -> None:
    kube, rec, obj = setup(with_spec())
    key = ("ml", "digits")
    rec(key, snap(obj))
    live = slim_child(stored(kube, "batch/v1", "Job", "ml", "digits"))
    obj = {**obj, "spec": {**obj["spec"], "suspend": True}, "status": rec.written_status[key],
           "metadata": {**obj["metadata"], "generation": 2}}
    rec(key, snap(obj, live))
    applied = [w for w in kube.tj_writes() if w[0] == "APPLY"]
    assert len(applied) == 1 and applied[0][2]["spec"]["suspend"] is True


def test_finished_job_gone_is_not_rerun() -> None:
    kube, rec, obj = setup(with_spec())
    obj["status"] = {"phase": "Succeeded", "conditions": []}
    rec(("ml", "digits"), snap(obj))
    assert kube.tj_writes() == []


def test_invalid_spec_fails_with_reason_once() -> None:
    kube, rec, obj = setup({"model": {"recipe": "mlp-classifier"}})  # no dataset
    rec(("ml", "digits"), snap(obj))
    writes = kube.tj_writes()
    assert len(writes) == 1 and writes[0][2]["phase"] == "Failed"
    assert "dataset" in writes[0][2]["message"]
    rec(("ml", "digits"), snap(obj))
    assert len(kube.tj_writes()) == 1


def test_a_settled_view_is_not_reconciled_again() -> None:
    """A reconcile that wrote nothing remembers the view; the very same objects again (a resync,
    a repeated event) cost no reconcile at all; any new value, or a new progress report,
    reconciles again."""
    kube, rec, obj = setup(with_spec())
    key = ("ml", "digits")
    rec(key, snap(obj))
    n = len(kube.writes)
    live_job = slim_child(stored(kube, "batch/v1", "Job", "ml", "digits"))
    view = snap({**obj, "status": kube.tj_writes()[1][2]}, live_job)
    rec(key, view)
    assert len(kube.writes) == n and key in rec.settled
    calls: list[int] = []
    real = rec.inner.reconcile

    async def counting(*a: Any) -> None:
        calls.append(1)
        await real(*a)

    rec.inner.reconcile = counting  # type: ignore[method-assign]
    rec(key, view)
    assert calls == []  # the same objects again: nothing runs
    again = snap(view.tj, dict(live_job))
    rec(key, again)
    assert calls == [1] and len(kube.writes) == n  # a new value: reconciled, nothing to write
    report = {"step": 3, "metrics": {"loss": 0.5}}
    rec(key, Snapshot(**{**again.__dict__, "reported": report}))  # the endpoint got a report
    assert calls == [1, 1] and kube.tj_writes()[-1][2]["progress"] == report
    # a pod starts running: the status changes (one write), and that view is not "settled"
    pod = {"metadata": {"name": "p", "annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
           "status": {"phase": "Running", "containerStatuses": []}}
    rec(key, snap(view.tj, live_job, [pod]))
    assert kube.tj_writes()[-1][2]["phase"] == "Running" and key not in rec.settled
    rec.forget(key)
    rec(key, view)
    assert len(calls) == 4


class RefusingKube(FakeKube):
    """The API server refusing the Job (what a CRD without the issue-18 rules let through)."""

    def __init__(self, error: ApiError) -> None:
        super().__init__()
        self.error = error
        self.attempts = 0

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "Job":
            self.attempts += 1
            raise self.error
        return await super().create(obj)


def test_a_job_refused_for_good_fails_the_trainingjob_once() -> None:
    error = ApiError(422, "Unprocessable Entity", {
        "message": 'Job.batch "digits" is invalid: spec.template.spec.containers[0].resources.'
                   'limits[cpu]: Invalid value: "-1": must be greater than or equal to 0',
        "details": {"name": "digits", "kind": "Job", "group": "batch", "causes": [
            {"field": "spec.template.spec.containers[0].resources.limits[cpu]"}]}})
    kube = RefusingKube(error)
    rec, obj = Rec(kube), tj(with_spec())
    key = ("ml", "digits")
    rec(key, snap(obj))  # no exception: the controller does not retry it
    status = [w for w in kube.writes if w[0] == "STATUS"]
    assert len(status) == 1 and status[0][2]["phase"] == "Failed"
    assert status[0][2]["message"].startswith("spec.resources: the API server refused Job")
    assert 'Invalid value: "-1"' in status[0][2]["message"]
    events = [w for w in kube.writes if "/events" in w[1]]
    assert len(events) == 1 and events[0][2]["reason"] == "InvalidSpec"
    # the resync and further events change nothing: no retry loop
    for _ in range(3):
        rec(key, snap(obj))
    assert kube.attempts == 1 and len([w for w in kube.writes if w[0] == "STATUS"]) == 1


def test_a_terminating_namespace_stops_the_trainingjob_quietly() -> None:
    kube = RefusingKube(ApiError(403, "Forbidden", {
        "message": 'jobs.batch "digits" is forbidden: unable to create new content in namespace '
                   "ml because it is being terminated"}))
    rec, obj = Rec(kube), tj(with_spec())
    for _ in range(5):
        rec(("ml", "digits"), snap(obj))
    assert kube.attempts == 1
    assert [w for w in kube.writes if w[0] == "STATUS"] == []
