"""The one level-based reconcile of a ModelDeployment: resolve the model → build the children →
server-side apply what differs (delete what is no longer wanted) → status → Events."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from kubeforge import events
from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.apply import ApiError, AsyncKube, merge_patch, resource_path
from kubeforge.conditions import condition_reason, invalid_spec_status, now_rfc3339
from kubeforge.context import OperatorContext
from kubeforge.controller import Key
from kubeforge.metrics import PhaseTracker
from kubeforge.modeldeployment import autoscaling as scaling
from kubeforge.modeldeployment import build as mdbuild
from kubeforge.modeldeployment._children import SPEC_HASH, Child
from kubeforge.modeldeployment.indexed import (
    API_VERSION,
    IDX_DEPLOY,
    IDX_HPA,
    IDX_MD,
    IDX_PODS,
    IDX_RS,
    IDX_SRC_TJ,
    IDX_SRC_TS,
    JSON,
    KIND,
    WATCHED,
    Snapshot,
    model_source_key,
    slim_deployment,
)
from kubeforge.modeldeployment.monitoring import MonitoringDiscovery
from kubeforge.modeldeployment.resolve import Resolved, deployed_model_uri, resolve, source_ref
from kubeforge.modeldeployment.rollout import with_rollout
from kubeforge.modeldeployment.rollout_build import CANDIDATE_OF, stable_deployment
from kubeforge.modeldeployment.rollout_sync import RolloutDriver
from kubeforge.modeldeployment.status import compute_status
from kubeforge.refusal import RefusalGuard

log = logging.getLogger("kubeforge.modeldeployment")


class ModelDeploymentReconciler:
    """The reconcile of one ModelDeployment (on the event loop; one per object at a time).

    Reconciles of different objects interleave at each await: all state here is keyed by the
    object, except the monitoring discovery (see `MonitoringDiscovery`).
    """

    def __init__(self, ctx: OperatorContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.kube: AsyncKube = ctx.api
        self.hash_key = self.settings.label(SPEC_HASH)
        self.discovery = MonitoringDiscovery(ctx.api)
        self.keda = scaling.keda_discovery(ctx.api)
        self.recent: dict[tuple[Key, str], str] = {}
        """(key, kind) → hash we applied that the watch may not show yet."""
        self.verified: dict[tuple[Key, str], tuple[str, float]] = {}
        """Unwatched children: (key, kind) → (hash, when last applied or checked)."""
        self.recent_deployment: dict[Key, JSON] = {}
        self.written_status: dict[Key, JSON] = {}
        self.phases = PhaseTracker(KIND)
        self.guard = RefusalGuard(KIND, condition="Ready")
        self.rollouts = RolloutDriver(ctx)

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
        children = {kind: ctx.one(idx, key) for kind, idx in WATCHED.items()}
        hpas = ctx.all(IDX_HPA, key)
        children[scaling.HPA] = scaling.own_hpa(hpas, key[1])  # never KEDA's keda-hpa-<name>
        return Snapshot(
            md=md,
            deployment=ctx.one(IDX_DEPLOY, key),
            replica_sets=ctx.all(IDX_RS, key),
            pods=ctx.all(IDX_PODS, key),
            children=children,
            source=source,
            trial_job=trial,
            hpas=hpas,
        )

    def forget(self, key: Key) -> None:
        for k in [k for k in self.recent if k[0] == key]:
            self.recent.pop(k, None)
        for k in [k for k in self.verified if k[0] == key]:
            self.verified.pop(k, None)
        self.recent_deployment.pop(key, None)
        self.written_status.pop(key, None)
        self.phases.forget(key)
        self.guard.forget(key)
        self.rollouts.forget(key)

    def child_gone(self, key: Key, kind: str) -> None:
        self.recent.pop((key, kind), None)
        if kind == "Deployment":
            self.recent_deployment.pop(key, None)

    # --- the reconcile (event loop) ---------------------------------------------------------

    async def __call__(self, key: Key, snap: Snapshot) -> float | None:
        if self.guard.holds(key, snap.md):
            return None
        return await self.guard.run(
            key, snap.md, lambda: self._reconcile(key, snap),
            lambda change: self._amend_status(key, snap.md, change),
        )

    async def _amend_status(self, key: Key, md: JSON, change: Any) -> None:
        """Write `change(current status)` (the refusal guard's writes)."""
        base = self.written_status.get(key) or md.get("status") or {}
        await self._write_status(key, md, base, change(base))

    async def _reconcile(self, key: Key, snap: Snapshot) -> float | None:
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
        rollout = await self.rollouts.run(
            key, md, spec, deployment, snap.pods, served, resolved, now
        )
        if rollout.stable_uri is not None:
            model_uri = rollout.stable_uri
        keep = None
        if spec.autoscaling is not None:
            if deployment is None:
                keep = spec.replicas  # start at spec.replicas (within min..max), not at 1
            elif deployment["metadata"].get("ownsReplicas"):
                keep = deployment["spec"].get("replicas")
        keda_served = await self.keda.available()
        desired = mdbuild.build(
            md,
            spec,
            self.settings,
            model_uri,
            monitoring_crds=await self.discovery.available(),
            keep_replicas=keep,
            keda_crds=keda_served,
        )
        if desired.deployment is not None:
            desired = replace(desired, deployment=stable_deployment(
                desired.deployment, self.settings,
                extra_args=rollout.stable_args, replicas=rollout.stable_replicas,
            ))

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
        # a canary's pods and ReplicaSets carry our selector label in a weight step: the
        # status is the stable Deployment's (the rollout has its own, status.rollout)
        cand = self.settings.label(CANDIDATE_OF)
        status = compute_status(
            md,
            spec,
            resolved,
            deployment,
            [p for p in snap.pods if cand not in (p["metadata"].get("labels") or {})],
            now=now,
            replica_sets=[
                r for r in snap.replica_sets if cand not in (r["metadata"].get("labels") or {})
            ],
            served_uri=served,
        )
        with_rollout(status, rollout.status, now, degraded=rollout.degraded)
        view = scaling.autoscaler_view(spec.autoscaling, key[1], snap.hpas, keda_served=keda_served)
        if view is not None:
            status["autoscaling"] = view
        else:
            status.pop("autoscaling", None)
        await self._write_status(key, md, base_status, status)
        return rollout.requeue

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
        self, key: Key, md: JSON, current: JSON | None, child: Child
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

    async def _sync_watched(self, key: Key, observed: JSON | None, child: Child) -> None:
        have = observed["metadata"]["annotations"].get(self.hash_key) if observed else None
        if have == child.hash or self.recent.get((key, child.kind)) == child.hash:
            return
        await self.kube.apply(child.manifest, parse=False)
        self.recent[(key, child.kind)] = child.hash

    async def _sync_unwatched(self, key: Key, child: Child) -> None:
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
                self.keda.invalidate()
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
            # 403 on an optional kind (KEDA, Prometheus Operator) whose rights the chart left
            # out (autoscaling.keda.enabled=false): the operator never made one either
            if not (exc.not_found or (exc.status == 403 and kind not in WATCHED)):
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
