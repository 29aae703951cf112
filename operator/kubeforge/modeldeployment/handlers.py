"""ModelDeployment's kopf wiring (thin): indexes of the object, its children and the TrainingJobs /
TuningStudies it may take its model from; event handlers that only queue a reconcile; the one
level-based reconcile (resolve → build → server-side apply what differs → status).

Triggers: the ModelDeployment itself, every owned child (Deployment, its ReplicaSets and pods,
Service, HPA, PDB), and status changes of a TrainingJob / TuningStudy that a ModelDeployment names
in `spec.model`. ServiceMonitor and PrometheusRule are not watched (their CRDs may be absent): they
are applied when their hash changes and re-checked with one GET per resync period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from kubeforge import events
from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.apply import ApiError, AsyncKube, merge_patch, resource_path
from kubeforge.conditions import condition_reason, invalid_spec_status, now_rfc3339
from kubeforge.context import OperatorContext
from kubeforge.controller import Controller, Key, slim_owner
from kubeforge.metrics import PhaseTracker
from kubeforge.modeldeployment import build as mdbuild
from kubeforge.modeldeployment.resolve import Resolved, deployed_model_uri, resolve, source_ref
from kubeforge.modeldeployment.status import compute_status

log = logging.getLogger("kubeforge.modeldeployment")

GROUP, VERSION, PLURAL = "kubeforge.io", "v1alpha1", "modeldeployments"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"

IDX_MD = "kubeforge-modeldeployments"
IDX_BY_SOURCE = "kubeforge-modeldeployment-by-source"
IDX_DEPLOY = "kubeforge-modeldeployment-deployments"
IDX_RS = "kubeforge-modeldeployment-replicasets"
IDX_PODS = "kubeforge-modeldeployment-pods"
IDX_SVC = "kubeforge-modeldeployment-services"
IDX_HPA = "kubeforge-modeldeployment-hpas"
IDX_PDB = "kubeforge-modeldeployment-pdbs"
IDX_SRC_TJ = "kubeforge-modeldeployment-source-trainingjobs"
IDX_SRC_TS = "kubeforge-modeldeployment-source-tuningstudies"

WATCHED = {
    "Service": IDX_SVC,
    "HorizontalPodAutoscaler": IDX_HPA,
    "PodDisruptionBudget": IDX_PDB,
}
UNWATCHED = ("ServiceMonitor", "PrometheusRule")
DISCOVERY_TTL_OK = 300.0
DISCOVERY_TTL_MISSING = 30.0

JSON = dict[str, Any]


# --- slim copies kept in the indexes ---------------------------------------------------------


def slim_md(body: Any) -> JSON:
    return slim_owner(body, KIND, API_VERSION)


def _meta(body: Any) -> JSON:
    meta = body["metadata"]
    return {
        "name": meta["name"],
        "uid": meta.get("uid"),
        "generation": meta.get("generation"),
        "annotations": dict(meta.get("annotations") or {}),
        "labels": dict(meta.get("labels") or {}),
        "deletionTimestamp": meta.get("deletionTimestamp"),
        "ownerReferences": list(meta.get("ownerReferences") or []),
    }


def owns_replicas(body: Any, manager: str) -> bool:
    """Whether `manager` (by server-side apply) owns the Deployment's spec.replicas."""
    for entry in body["metadata"].get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {}):
            return True
    return False


def slim_deployment(body: Any, manager: str) -> JSON:
    spec = body.get("spec") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    return {
        "metadata": {**_meta(body), "ownsReplicas": owns_replicas(body, manager)},
        "spec": {
            "replicas": spec.get("replicas"),
            "template": {
                "spec": {
                    "containers": [
                        {"name": c.get("name"), "args": list(c.get("args") or [])}
                        for c in containers
                        if c.get("name") == mdbuild.CONTAINER
                    ]
                }
            },
        },
        "status": body.get("status") or {},
    }


def slim_child(body: Any) -> JSON:
    return {"metadata": _meta(body)}


def slim_pod(body: Any) -> JSON:
    status = body.get("status") or {}
    return {
        "metadata": {
            "name": body["metadata"]["name"],
            "labels": dict(body["metadata"].get("labels") or {}),
            "deletionTimestamp": body["metadata"].get("deletionTimestamp"),
        },
        "status": {
            "phase": status.get("phase"),
            "conditions": status.get("conditions") or [],
            "containerStatuses": status.get("containerStatuses") or [],
        },
    }


def slim_source(body: Any) -> JSON:
    status = body.get("status") or {}
    keep = {k: status[k] for k in ("phase", "artifacts", "bestTrial") if k in status}
    return {"metadata": {"name": body["metadata"]["name"]}, "status": keep}


def model_source_key(spec: Any) -> tuple[str, str] | None:
    """(kind, name) that `spec.model` refers to (from the raw spec; no validation)."""
    model = (spec or {}).get("model") or {}
    if model.get("fromTrainingJob"):
        return ("TrainingJob", str(model["fromTrainingJob"]))
    if model.get("fromTuningStudy"):
        return ("TuningStudy", str(model["fromTuningStudy"]))
    return None


@dataclass(frozen=True)
class Snapshot:
    md: JSON
    deployment: JSON | None
    replica_sets: list[JSON]
    pods: list[JSON]
    children: dict[str, JSON | None]
    source: JSON | None
    trial_job: JSON | None


class MonitoringDiscovery:
    """Whether the Prometheus Operator's CRDs are served (discovery API, cached).

    Shared by the reconciles of every ModelDeployment, which interleave at awaits: one discovery
    request at a time (the others wait for its answer, as behind the old thread lock), and an
    `invalidate` while a request is in flight is not undone by that request's answer.
    """

    def __init__(self, kube: AsyncKube) -> None:
        self.kube = kube
        self._checking: asyncio.Future[bool] | None = None
        self._value: bool | None = None
        self._checked = 0.0
        self._generation = 0
        """Bumped by `invalidate` (an answer asked for before it is not kept)."""

    async def available(self) -> bool:
        value = self._value
        if value is not None:
            ttl = DISCOVERY_TTL_OK if value else DISCOVERY_TTL_MISSING
            if time.monotonic() - self._checked < ttl:
                return value
        if self._checking is None or self._checking.done():
            self._checking = asyncio.ensure_future(self._check())
        # shielded: a cancelled reconcile does not cancel the answer the others wait for
        return await asyncio.shield(self._checking)

    async def _check(self) -> bool:
        generation = self._generation
        try:
            doc = await self.kube.request("GET", "/apis/" + mdbuild.MONITORING_GROUP)
            names = {r.get("name") for r in doc.get("resources") or []}
            value = {"servicemonitors", "prometheusrules"} <= names
        except (ApiError, OSError):
            value = False
        if generation == self._generation:
            self._value = value
            self._checked = time.monotonic()
        return value

    def invalidate(self) -> None:
        self._generation += 1
        self._value = None
        self._checking = None


class ModelDeploymentReconciler:
    """The reconcile of one ModelDeployment (on the event loop; one per object at a time).

    Reconciles of different objects interleave at each await: all state here is keyed by the
    object, except the monitoring discovery (see `MonitoringDiscovery`).
    """

    def __init__(self, ctx: OperatorContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.kube: AsyncKube = ctx.api
        self.hash_key = self.settings.label(mdbuild.SPEC_HASH)
        self.discovery = MonitoringDiscovery(ctx.api)
        self.recent: dict[tuple[Key, str], str] = {}
        """(key, kind) → hash we applied that the watch may not show yet."""
        self.verified: dict[tuple[Key, str], tuple[str, float]] = {}
        """Unwatched children: (key, kind) → (hash, when last applied or checked)."""
        self.recent_deployment: dict[Key, JSON] = {}
        self.written_status: dict[Key, JSON] = {}
        self.phases = PhaseTracker(KIND)

    # --- bookkeeping (event loop) -----------------------------------------------------------

    def snapshot(self, key: Key) -> Snapshot | None:
        ctx = self.ctx
        md = ctx.one(IDX_MD, key)
        if md is None:
            return None
        source = trial = None
        ref = model_source_key(md.get("spec"))
        if ref is not None:
            idx = IDX_SRC_TJ if ref[0] == "TrainingJob" else IDX_SRC_TS
            source = ctx.one(idx, (key[0], ref[1]))
            best = ((source or {}).get("status") or {}).get("bestTrial") or {}
            if ref[0] == "TuningStudy" and best.get("name"):
                trial = ctx.one(IDX_SRC_TJ, (key[0], str(best["name"])))
        return Snapshot(
            md=md,
            deployment=ctx.one(IDX_DEPLOY, key),
            replica_sets=ctx.all(IDX_RS, key),
            pods=ctx.all(IDX_PODS, key),
            children={kind: ctx.one(idx, key) for kind, idx in WATCHED.items()},
            source=source,
            trial_job=trial,
        )

    def forget(self, key: Key) -> None:
        for k in [k for k in self.recent if k[0] == key]:
            self.recent.pop(k, None)
        for k in [k for k in self.verified if k[0] == key]:
            self.verified.pop(k, None)
        self.recent_deployment.pop(key, None)
        self.written_status.pop(key, None)
        self.phases.forget(key)

    def child_gone(self, key: Key, kind: str) -> None:
        self.recent.pop((key, kind), None)
        if kind == "Deployment":
            self.recent_deployment.pop(key, None)

    # --- the reconcile (event loop) ---------------------------------------------------------

    async def __call__(self, key: Key, snap: Snapshot) -> float | None:
        md = snap.md
        if md["metadata"].get("deletionTimestamp"):
            return None  # children go by owner references
        now = now_rfc3339()
        base_status = self.written_status.get(key) or md.get("status") or {}
        md = {**md, "status": base_status}
        try:
            spec = ModelDeploymentSpec.model_validate(md["spec"])
        except ValidationError as exc:
            await self._invalid(key, md, exc, now)
            return None

        ref = source_ref(spec.model)
        resolved: Resolved = resolve(
            spec.model, snap.source if ref else None, snap.trial_job if ref else None
        )
        deployment = self._current_deployment(key, snap.deployment)
        served = deployed_model_uri(deployment)
        # a model that cannot be served (yet) keeps the previous one running
        model_uri = resolved.uri or served
        keep = None
        if spec.autoscaling is not None:
            if deployment is None:
                keep = spec.replicas  # start at spec.replicas (within min..max), not at 1
            elif deployment["metadata"].get("ownsReplicas"):
                keep = deployment["spec"].get("replicas")
        desired = mdbuild.build(
            md,
            spec,
            self.settings,
            model_uri,
            monitoring_crds=await self.discovery.available(),
            keep_replicas=keep,
        )

        for child in desired.children():
            if child.kind == "Deployment":
                applied = await self._sync_deployment(key, md, deployment, child)
                if applied is not None:
                    deployment = applied
            elif child.kind in WATCHED:
                await self._sync_watched(key, snap.children.get(child.kind), child)
            else:
                await self._sync_unwatched(key, child)
        for api_version, kind in desired.absent:
            await self._ensure_absent(key, md, api_version, kind, snap.children.get(kind))

        served = deployed_model_uri(deployment)
        status = compute_status(
            md,
            spec,
            resolved,
            deployment,
            snap.pods,
            now=now,
            replica_sets=snap.replica_sets,
            served_uri=served,
        )
        await self._write_status(key, md, base_status, status)
        return None

    def _current_deployment(self, key: Key, observed: JSON | None) -> JSON | None:
        recent = self.recent_deployment.get(key)
        if recent is not None and observed is not None:
            same_uid = observed["metadata"].get("uid") == recent["metadata"].get("uid")
            caught_up = observed["metadata"]["annotations"].get(self.hash_key) == recent[
                "metadata"
            ]["annotations"].get(self.hash_key)
            if not same_uid or caught_up:
                self.recent_deployment.pop(key, None)
                return observed
        return recent or observed

    def _owned_by_other(self, md: JSON, current: JSON | None) -> bool:
        if current is None:
            return False
        owners = current["metadata"].get("ownerReferences") or []
        return bool(owners) and not any(o.get("uid") == md["metadata"]["uid"] for o in owners)

    async def _sync_deployment(
        self, key: Key, md: JSON, current: JSON | None, child: mdbuild.Child
    ) -> JSON | None:
        if self._owned_by_other(md, current):
            log.warning("Deployment %s/%s belongs to another object; not touching it", *key)
            return None
        if current is not None and current["metadata"]["annotations"].get(self.hash_key) == (
            child.hash
        ):
            return None
        old_uri = deployed_model_uri(current)
        applied = await self.kube.apply(child.manifest)
        slim = slim_deployment(applied, self.settings.field_manager)
        self.recent_deployment[key] = slim
        new_uri = deployed_model_uri(slim)
        if current is not None and old_uri != new_uri:
            await events.post(
                self.kube, md, events.NORMAL, "RollingOut", f"rolling out model {new_uri}"
            )
        return slim

    async def _sync_watched(self, key: Key, observed: JSON | None, child: mdbuild.Child) -> None:
        have = observed["metadata"]["annotations"].get(self.hash_key) if observed else None
        if have == child.hash or self.recent.get((key, child.kind)) == child.hash:
            return
        await self.kube.apply(child.manifest, parse=False)
        self.recent[(key, child.kind)] = child.hash

    async def _sync_unwatched(self, key: Key, child: mdbuild.Child) -> None:
        mark = (key, child.kind)
        seen = self.verified.get(mark)
        fresh = seen is not None and time.monotonic() - seen[1] < self.settings.resync_seconds
        if seen is not None and seen[0] == child.hash and fresh:
            return
        if seen is not None and seen[0] == child.hash:
            live = await self.kube.get(child.api_version, child.kind, key[0], key[1])
            have = ((live or {}).get("metadata") or {}).get("annotations", {}).get(self.hash_key)
            if have == child.hash:
                self.verified[mark] = (child.hash, time.monotonic())
                return
        try:
            await self.kube.apply(child.manifest, parse=False)
        except ApiError as exc:
            if exc.not_found:  # the CRD went away
                self.discovery.invalidate()
                return
            raise
        self.verified[mark] = (child.hash, time.monotonic())

    async def _ensure_absent(
        self, key: Key, md: JSON, api_version: str, kind: str, observed: JSON | None
    ) -> None:
        if kind in WATCHED:
            if observed is None or self._owned_by_other(md, observed):
                return
        else:
            mark = (key, kind)
            if self.verified.get(mark) == ("", 0.0):
                return
        try:
            await self.kube.request(
                "DELETE",
                resource_path(api_version, kind, key[0], key[1]),
                resource=kind.lower(),
                parse=False,
            )
        except ApiError as exc:
            if not exc.not_found:
                raise
        self.recent.pop((key, kind), None)
        if kind not in WATCHED:
            self.verified[(key, kind)] = ("", 0.0)

    async def _write_status(self, key: Key, md: JSON, base: JSON, status: JSON) -> None:
        patch = merge_patch(base, status)
        if patch:
            await self.kube.patch_status(API_VERSION, KIND, key[0], key[1], patch)
            self.written_status[key] = status
            await self._announce(md, base, status)
        self.phases.set(key, status.get("phase", "Pending"))

    async def _announce(self, md: JSON, old: JSON, new: JSON) -> None:
        """Events for the phase changes a user must see."""
        before, after = old.get("phase"), new.get("phase")
        if before == after:
            return
        msg = new.get("message", "")
        if after in ("Degraded", "Failed"):
            reason = condition_reason(new, ("ModelLoaded", "Ready"), after, only_status="False")
            await events.post(self.kube, md, events.WARNING, reason, msg)
        elif after == "Ready":
            await events.post(
                self.kube, md, events.NORMAL, "Ready", f"{msg}; serving at {new['url']}"
            )

    async def _invalid(self, key: Key, md: JSON, exc: ValidationError, now: str) -> None:
        status = invalid_spec_status(md, exc.errors(), now, condition="Ready")
        await self._write_status(key, md, md.get("status") or {}, status)


def register(ctx: OperatorContext) -> Controller[Snapshot]:
    """Register ModelDeployment's indexes and event handlers on `ctx.registry`; returns its
    controller (started by main)."""
    s = ctx.settings
    owner_label = s.label("modeldeployment")
    selector = {owner_label: kopf.PRESENT}
    rec = ModelDeploymentReconciler(ctx)
    ctl: Controller[Snapshot] = Controller(
        KIND, snapshot=rec.snapshot, reconcile=rec, workers=s.concurrency, forget=rec.forget
    )
    ctl.reconciler = rec  # type: ignore[attr-defined]

    def parent(namespace: str | None, labels: Any) -> Key:
        return (namespace or "", labels[owner_label])

    # --- the object and who refers to what --------------------------------------------------

    @ctx.index_handler(GROUP, VERSION, PLURAL, id=IDX_MD)
    async def index_md(**kw: Any) -> Any:
        return {(kw["namespace"], kw["name"]): slim_md(kw["body"])}

    @ctx.index_handler(GROUP, VERSION, PLURAL, id=IDX_BY_SOURCE)
    async def index_by_source(**kw: Any) -> Any:
        ref = model_source_key(kw["body"].get("spec"))
        if ref is None:
            return None
        return {(kw["namespace"], *ref): kw["name"]}

    @ctx.event_handler(GROUP, VERSION, PLURAL, id="kubeforge-modeldeployment-event")
    async def on_md(**kw: Any) -> None:
        key = (kw["namespace"], kw["name"])
        if kw["type"] == "DELETED":
            ctl.forget(key)
        else:
            ctl.enqueue(key)

    # --- model sources ---------------------------------------------------------------------

    def referrers(namespace: str, kind: str, name: str) -> list[str]:
        return [str(n) for n in ctx.all(IDX_BY_SOURCE, (namespace, kind, name))]

    @ctx.index_handler(GROUP, VERSION, "trainingjobs", id=IDX_SRC_TJ)
    async def index_src_tj(**kw: Any) -> Any:
        return {(kw["namespace"], kw["name"]): slim_source(kw["body"])}

    @ctx.index_handler(GROUP, VERSION, "tuningstudies", id=IDX_SRC_TS)
    async def index_src_ts(**kw: Any) -> Any:
        return {(kw["namespace"], kw["name"]): slim_source(kw["body"])}

    @ctx.event_handler(
        GROUP, VERSION, "trainingjobs", id="kubeforge-modeldeployment-tj-event"
    )
    async def on_tj(**kw: Any) -> None:
        ns, name = kw["namespace"], kw["name"]
        for md_name in referrers(ns, "TrainingJob", name):
            ctl.enqueue((ns, md_name))
        # a best trial's TrainingJob carries the sha256 of a study's model
        for md_name in _study_referrers(ns, name):
            ctl.enqueue((ns, md_name))

    def _study_referrers(ns: str, tj_name: str) -> list[str]:
        out: list[str] = []
        idx = ctx.index(IDX_BY_SOURCE)
        for key in list(idx):
            if key[0] != ns or key[1] != "TuningStudy":
                continue
            study = ctx.one(IDX_SRC_TS, (ns, key[2]))
            best = ((study or {}).get("status") or {}).get("bestTrial") or {}
            if best.get("name") == tj_name:
                out += [str(n) for n in idx.all(key)]
        return out

    @ctx.event_handler(
        GROUP, VERSION, "tuningstudies", id="kubeforge-modeldeployment-ts-event"
    )
    async def on_ts(**kw: Any) -> None:
        ns, name = kw["namespace"], kw["name"]
        for md_name in referrers(ns, "TuningStudy", name):
            ctl.enqueue((ns, md_name))

    # --- children --------------------------------------------------------------------------

    @ctx.index_handler("apps", "v1", "deployments", id=IDX_DEPLOY, labels=selector)
    async def index_deploy(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_deployment(kw["body"], s.field_manager)}

    @ctx.index_handler("apps", "v1", "replicasets", id=IDX_RS, labels=selector)
    async def index_rs(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_child(kw["body"])}

    @ctx.index_handler("", "v1", "pods", id=IDX_PODS, labels=selector)
    async def index_pods(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_pod(kw["body"])}

    @ctx.index_handler("", "v1", "services", id=IDX_SVC, labels=selector)
    async def index_svc(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_child(kw["body"])}

    @ctx.index_handler(
        "autoscaling", "v2", "horizontalpodautoscalers", id=IDX_HPA, labels=selector
    )
    async def index_hpa(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_child(kw["body"])}

    @ctx.index_handler("policy", "v1", "poddisruptionbudgets", id=IDX_PDB, labels=selector)
    async def index_pdb(**kw: Any) -> Any:
        return {parent(kw["namespace"], kw["labels"]): slim_child(kw["body"])}

    def child_event(kind: str) -> Any:
        async def on_child(**kw: Any) -> None:
            key = parent(kw["namespace"], kw["labels"])
            if kw["type"] == "DELETED":
                rec.child_gone(key, kind)
            ctl.enqueue(key)

        return on_child

    for group, version, resource, kind in (
        ("apps", "v1", "deployments", "Deployment"),
        ("apps", "v1", "replicasets", "ReplicaSet"),
        ("", "v1", "pods", "Pod"),
        ("", "v1", "services", "Service"),
        ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
        ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ):
        ctx.event_handler(
            group,
            version,
            resource,
            id=f"kubeforge-modeldeployment-{resource}-event",
            labels=selector,
        )(child_event(kind))

    def all_keys() -> list[Key]:
        return list(ctx.index(IDX_MD))

    ctl.all_keys = all_keys  # type: ignore[attr-defined]
    ctx.controllers.append(ctl)
    return ctl
