"""The TuningStudy reconcile (on the event loop) against an in-memory API client: what it creates,
patches, stops, promotes and writes, in which order, and that it never writes a thing twice."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from kubeforge.apply import ApiError
from kubeforge.context import OperatorContext
from kubeforge.settings import Settings
from kubeforge.tuningstudy import build as tb
from kubeforge.tuningstudy.handlers import Snapshot, TuningStudyReconciler, slim_study, slim_trial

JSON = dict[str, Any]
KEY = ("ml", "s")


class FakeKube:
    """The operator's AsyncKube, in memory: trial TrainingJobs, pods, and a log of writes."""

    field_manager = "kubeforge"

    def __init__(self) -> None:
        self.trials: dict[str, JSON] = {}
        self.pods: dict[str, JSON] = {}
        self.models: dict[str, JSON] = {}
        self.writes: list[tuple[str, str, Any]] = []
        self.rv = 0

    def _bump(self, obj: JSON) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    async def get(self, api_version: str, kind: str, ns: str, name: str) -> JSON | None:
        store = self.trials if kind == "TrainingJob" else self.models
        return copy.deepcopy(store.get(name))

    async def create(self, obj: JSON) -> JSON:
        await asyncio.sleep(0)  # the answer travels: other reconciles run meanwhile
        name = obj["metadata"]["name"]
        if obj["kind"] == "Event":
            self.writes.append(("EVENT", obj["reason"], obj["message"]))
            return obj
        if name in self.trials:
            raise ApiError(409, "Conflict")
        self.writes.append(("CREATE", name, obj))
        stored = copy.deepcopy(obj)
        stored["metadata"]["uid"] = "uid-" + name
        self._bump(stored)
        self.trials[name] = stored
        return copy.deepcopy(stored)

    async def patch(
        self,
        api_version: str,
        kind: str,
        ns: str,
        name: str,
        patch: JSON,
        *,
        sub: str = "",
        parse: bool = True,
    ) -> JSON:
        if kind == "Pod":
            assert not parse and not sub  # a write whose answer nobody reads
            self.writes.append(("POD", name, patch))
            self.pods[name]["metadata"].setdefault("annotations", {}).update(
                patch["metadata"]["annotations"]
            )
            return {}
        assert kind == "TrainingJob" and not sub
        if name not in self.trials:
            raise ApiError(404, "NotFound")
        self.writes.append(("PATCH", name, patch))
        obj = self.trials[name]
        obj["metadata"].setdefault("annotations", {}).update(patch["metadata"]["annotations"])
        self._bump(obj)
        return copy.deepcopy(obj)

    async def patch_status(
        self, api_version: str, kind: str, ns: str, name: str, patch: JSON
    ) -> None:
        assert (kind, name) == ("TuningStudy", KEY[1])
        self.writes.append(("STATUS", name, patch))

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        resource: str = "",
        parse: bool = True,
    ) -> JSON:
        if method == "GET" and path == f"/api/v1/namespaces/{KEY[0]}/pods":
            assert query is not None
            label, trial = query["labelSelector"].split("=")
            items = [p for p in self.pods.values() if p["metadata"]["labels"].get(label) == trial]
            return {"items": copy.deepcopy(items)}
        raise AssertionError(f"unexpected {method} {path}")

    async def apply(self, obj: JSON, *, force: bool = True, parse: bool = True) -> JSON:
        assert force and not parse  # a write whose answer nobody reads
        assert obj["kind"] == "ModelDeployment"
        self.writes.append(("APPLY", obj["metadata"]["name"], obj))
        self.models[obj["metadata"]["name"]] = copy.deepcopy(obj)
        return {}

    def kinds(self) -> list[str]:
        return [w[0] for w in self.writes]


class Rec:
    """A reconciler driven synchronously (each call runs the coroutine to its end)."""

    def __init__(self, kube: FakeKube) -> None:
        self.inner = TuningStudyReconciler(
            OperatorContext(settings=Settings(), kube=kube, api=kube)  # type: ignore[arg-type]
        )

    def __call__(self, view: Snapshot) -> None:
        asyncio.run(self.inner(KEY, view))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def study(**over: Any) -> JSON:
    spec: JSON = {
        "objective": {"metric": "loss", "direction": "minimize"},
        "searchSpace": {"x": {"type": "float", "low": -5, "high": 5}},
        "algorithm": {"name": "random", "seed": 1},
        "maxTrials": 4,
        "parallelism": 2,
        "trialTemplate": {"spec": {"command": ["train"]}},
    }
    spec.update(over)
    return slim_study(
        {
            "apiVersion": "kubeforge.io/v1alpha1",
            "metadata": {"name": KEY[1], "namespace": KEY[0], "uid": "study-uid", "generation": 1},
            "spec": spec,
        }
    )


def watched(kube: FakeKube) -> list[JSON]:
    """The trials as the watch shows them once it has caught up."""
    return [slim_trial(t) for t in kube.trials.values()]


def finish(kube: FakeKube, name: str, loss: float) -> None:
    t = kube.trials[name]
    t["status"] = {
        "phase": "Succeeded",
        "metrics": {"loss": loss},
        "artifacts": {"model": f"s3://b/{name}/model.onnx"},
    }
    kube._bump(t)


def test_trials_are_created_once_even_before_the_watch_shows_them() -> None:
    kube = FakeKube()
    rec = Rec(kube)
    obj = study()
    rec(Snapshot(study=obj, trials=[]))
    assert kube.kinds() == ["CREATE", "CREATE", "STATUS"]
    assert set(kube.trials) == {tb.trial_name("s", 0), tb.trial_name("s", 1)}
    assert kube.writes[-1][2]["phase"] == "Running"
    rec(Snapshot(study=obj, trials=[]))  # the watch is behind: our own writes count
    # no trial created twice; the status now counts the two trials as running
    assert kube.kinds() == ["CREATE", "CREATE", "STATUS", "STATUS"]
    assert "2 trials running" in str(kube.writes[-1][2])
    n = len(kube.writes)
    rec(Snapshot(study={**obj, "status": rec.written_status[KEY]}, trials=watched(kube)))
    assert len(kube.writes) == n and rec.recent[KEY] == {}  # caught up: nothing to write


def test_target_stops_running_trials_by_asking_the_trial_once() -> None:
    kube = FakeKube()
    rec = Rec(kube)
    obj = study(objective={"metric": "loss", "direction": "minimize", "target": 0.5})
    rec(Snapshot(study=obj, trials=[]))
    t0, t1 = tb.trial_name("s", 0), tb.trial_name("s", 1)
    label = Settings().label("trainingjob")
    kube.pods["p1"] = {"metadata": {"name": "p1", "labels": {label: t1}}}
    finish(kube, t0, 0.1)
    del kube.writes[:]
    rec(Snapshot(study=obj, trials=watched(kube)))
    # the request on the trial TrainingJob (its child), then the status and its Event; never a
    # write on the trial's pods (one owner per object: the endpoint answers the trainer)
    assert kube.kinds() == ["PATCH", "STATUS", "EVENT"]
    assert kube.writes[0][1:] == (t1, {"metadata": {"annotations": {tb.STOP: tb.STUDY_SUCCEEDED}}})
    assert kube.writes[1][2]["phase"] == "Succeeded"
    assert kube.writes[2][1] == "TargetReached"
    assert tb.STOP not in (kube.pods["p1"]["metadata"].get("annotations") or {})
    del kube.writes[:]
    rec(Snapshot(study={**obj, "status": rec.written_status[KEY]}, trials=watched(kube)))
    assert kube.writes == []  # recorded: not asked twice


def test_promotion_is_applied_once_with_an_event() -> None:
    kube = FakeKube()
    rec = Rec(kube)
    obj = study(maxTrials=1, parallelism=1, promote={"modelDeployment": "serve"})
    rec(Snapshot(study=obj, trials=[]))
    t0 = tb.trial_name("s", 0)
    finish(kube, t0, 0.3)
    del kube.writes[:]
    rec(Snapshot(study={**obj, "status": rec.written_status[KEY]}, trials=watched(kube)))
    assert kube.kinds() == ["APPLY", "EVENT", "STATUS", "EVENT"]
    assert kube.writes[0][2]["spec"] == {"model": {"uri": f"s3://b/{t0}/model.onnx"}}
    assert kube.writes[1][1] == "Promoted"
    assert kube.writes[2][2]["phase"] == "Succeeded"
    del kube.writes[:]
    rec(Snapshot(study={**obj, "status": rec.written_status[KEY]}, trials=watched(kube)))
    assert kube.writes == []
    # a fresh operator finds the ModelDeployment already serving that model: no apply
    rec2 = Rec(kube)
    rec2(Snapshot(study={**obj, "status": rec.written_status[KEY]}, trials=watched(kube)))
    assert kube.writes == [] and rec2.promoted[KEY] == f"s3://b/{t0}/model.onnx"


def test_invalid_spec_fails_once_with_an_event() -> None:
    kube = FakeKube()
    rec = Rec(kube)
    obj = study(maxTrials=0)
    rec(Snapshot(study=obj, trials=[]))
    assert kube.kinds() == ["STATUS", "EVENT"]
    st = kube.writes[0][2]
    assert st["phase"] == "Failed" and "maxTrials" in st["message"]
    rec(Snapshot(study=obj, trials=[]))
    assert kube.kinds() == ["STATUS", "EVENT"]


def test_two_studies_interleave_on_one_loop() -> None:
    """Reconciles of different studies run concurrently (interleaving at every await) and each
    keeps to its own trials."""
    kube = FakeKube()
    rec = TuningStudyReconciler(
        OperatorContext(settings=Settings(), kube=kube, api=kube)  # type: ignore[arg-type]
    )
    a, b = study(), study()
    b = {**b, "metadata": {**b["metadata"], "name": "t", "uid": "other-uid"}}
    kube.patch_status = _any_status(kube)  # type: ignore[method-assign]

    async def both() -> None:
        await asyncio.gather(rec(KEY, Snapshot(a, [])), rec(("ml", "t"), Snapshot(b, [])))

    asyncio.run(both())
    assert sorted(kube.trials) == sorted([tb.trial_name(s, i) for s in ("s", "t") for i in (0, 1)])
    assert set(rec.recent[KEY]) == {tb.trial_name("s", 0), tb.trial_name("s", 1)}
    assert set(rec.recent[("ml", "t")]) == {tb.trial_name("t", 0), tb.trial_name("t", 1)}
    assert sorted(k for k in rec.written_status) == [KEY, ("ml", "t")]


def _any_status(kube: FakeKube) -> Any:
    async def patch_status(api_version: str, kind: str, ns: str, name: str, patch: JSON) -> None:
        kube.writes.append(("STATUS", name, patch))
        await asyncio.sleep(0)

    return patch_status
