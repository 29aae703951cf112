"""A canary rollout through the ModelDeployment reconcile, against an in-memory API client: what
it applies when spec.model changes, and that a second pass with nothing new writes nothing."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.apply import ApiError
from kubeforge.context import OperatorContext
from kubeforge.modeldeployment import build as mdbuild
from kubeforge.modeldeployment.handlers import ModelDeploymentReconciler, Snapshot, slim_deployment
from kubeforge.modeldeployment.indexed import slim_md
from kubeforge.settings import Settings

JSON = dict[str, Any]
KEY = ("ml", "digits")
V1, V2 = "s3://models/digits/v1/", "s3://models/digits/v2/"
ROLLOUT = {"strategy": "Canary", "steps": [{"shadow": 100, "pause": "1m"}]}


class MemoryKube:
    field_manager = "kubeforge"

    def __init__(self) -> None:
        self.applied: list[JSON] = []
        self.status: list[JSON] = []
        self.events: list[JSON] = []

    async def request(self, method: str, path: str, **kw: Any) -> JSON:
        if method == "DELETE" or path in ("/apis/monitoring.coreos.com/v1", "/apis/keda.sh/v1alpha1"):
            raise ApiError(404, "NotFound")  # nothing to delete; no Prometheus Operator, no KEDA
        raise AssertionError(f"unexpected {method} {path}")

    async def apply(self, obj: JSON, *, force: bool = True, parse: bool = True) -> JSON:
        self.applied.append(copy.deepcopy(obj))
        return copy.deepcopy(obj) if parse else {}

    async def get(self, *args: Any) -> JSON | None:
        return None

    async def patch_status(self, api_version: str, kind: str, ns: str, name: str,
                           patch: JSON) -> None:
        self.status.append(patch)

    async def create(self, obj: JSON) -> JSON:
        self.events.append(obj)
        return obj


def the_md(uri: str) -> JSON:
    return slim_md({
        "apiVersion": "kubeforge.io/v1alpha1",
        "metadata": {"name": "digits", "namespace": "ml", "uid": "md-uid", "generation": 2},
        "spec": {"model": {"uri": uri}, "replicas": 2, "rollout": ROLLOUT},
        "status": {},
    })


def serving(md: JSON, uri: str, settings: Settings) -> JSON:
    """The stable Deployment as the index holds it: running `uri`, every replica ready."""
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    child = mdbuild.build_deployment(md, spec, settings, uri)
    live = copy.deepcopy(child.manifest)
    live["metadata"]["uid"] = "dep-uid"
    live["metadata"]["generation"] = 1
    live["status"] = {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                      "readyReplicas": 2, "availableReplicas": 2}
    return slim_deployment(live, "kubeforge")


def test_a_model_change_starts_a_canary_and_a_quiet_second_pass_writes_nothing() -> None:
    kube = MemoryKube()
    settings = Settings()
    rec = ModelDeploymentReconciler(
        OperatorContext(settings=settings, kube=kube, api=kube)  # type: ignore[arg-type]
    )
    md = the_md(V2)
    snap = Snapshot(md=md, deployment=serving(md, V1, settings), replica_sets=[], pods=[],
                    children={}, source=None, trial_job=None)
    requeue = asyncio.run(rec(KEY, snap))
    kinds = {(o["kind"], o["metadata"]["name"]) for o in kube.applied}
    assert ("Deployment", "digits-candidate") in kinds and ("Service", "digits-candidate") in kinds
    assert ("Deployment", "digits") not in kinds  # the stable one keeps serving v1 untouched
    cand = next(o for o in kube.applied if o["metadata"]["name"] == "digits-candidate"
                and o["kind"] == "Deployment")
    args = cand["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model") + 1] == V2
    assert settings.label("modeldeployment") not in cand["spec"]["template"]["metadata"]["labels"]
    rollout = kube.status[-1]["rollout"]
    assert rollout["phase"] == "Progressing" and rollout["candidate"]["uri"] == V2
    assert rollout["stable"]["uri"] == V1
    assert "waiting for a candidate replica" in rollout["message"]
    assert kube.status[-1]["phase"] == "Progressing"  # Argo CD: Progressing during a rollout
    assert [e["reason"] for e in kube.events] == ["RolloutStarted"]
    assert requeue is not None and requeue <= 2.0  # looks again soon while the candidate starts

    applied, written, posted = len(kube.applied), len(kube.status), len(kube.events)
    asyncio.run(rec(KEY, snap))
    assert (len(kube.applied), len(kube.status), len(kube.events)) == (applied, written, posted)


def _progressing(md: JSON, candidate: str, stable: str) -> JSON:
    md = copy.deepcopy(md)
    md["status"] = {"rollout": {
        "phase": "Progressing", "step": 0, "steps": 1, "weight": 0, "shadow": 100,
        "candidate": {"uri": candidate}, "stable": {"uri": stable},
        "stepStartedAt": "2026-12-06T10:00:00Z", "startedAt": "2026-12-06T10:00:00Z",
    }}
    return md


def test_a_promotion_read_back_late_is_promoted_not_reverted() -> None:
    """The last step promoted V2 and the stable Deployment now runs it, but the object this pass
    reads still says Progressing (our own status write not yet seen): that is a promotion."""
    kube = MemoryKube()
    settings = Settings()
    rec = ModelDeploymentReconciler(
        OperatorContext(settings=settings, kube=kube, api=kube)  # type: ignore[arg-type]
    )
    md = _progressing(the_md(V2), candidate=V2, stable=V1)
    snap = Snapshot(md=md, deployment=serving(md, V2, settings), replica_sets=[], pods=[],
                    children={}, source=None, trial_job=None)
    asyncio.run(rec(KEY, snap))
    rollout = kube.status[-1]["rollout"]
    assert rollout["phase"] == "Promoted", rollout
    assert "RolledBack" not in [e["reason"] for e in kube.events]


def test_spec_model_back_to_the_stable_one_mid_rollout_is_a_rollback() -> None:
    kube = MemoryKube()
    settings = Settings()
    rec = ModelDeploymentReconciler(
        OperatorContext(settings=settings, kube=kube, api=kube)  # type: ignore[arg-type]
    )
    md = _progressing(the_md(V1), candidate=V2, stable=V1)
    snap = Snapshot(md=md, deployment=serving(md, V1, settings), replica_sets=[], pods=[],
                    children={}, source=None, trial_job=None)
    asyncio.run(rec(KEY, snap))
    rollout = kube.status[-1]["rollout"]
    assert rollout["phase"] == "RolledBack" and rollout["reason"] == "ModelReverted"
    assert "RolledBack" in [e["reason"] for e in kube.events]
