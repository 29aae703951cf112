"""The reconcile of one TrainingJob: read its snapshot, build the children, write what changed
and the one status."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from kubeforge import events
from kubeforge.api.trainingjob import TrainingJobSpec
from kubeforge.apply import ApiError, merge_patch
from kubeforge.conditions import condition_reason, invalid_spec_status, now_rfc3339
from kubeforge.context import OperatorContext
from kubeforge.controller import Key
from kubeforge.metrics import PhaseTracker
from kubeforge.refusal import RefusalGuard
from kubeforge.trainingjob import build as tjbuild
from kubeforge.trainingjob.indexed import (
    API_VERSION,
    IDX_JOBS,
    IDX_PODS,
    IDX_SVCS,
    IDX_TJ,
    IDX_WORKLOADS,
    JSON,
    KIND,
    Snapshot,
    same_view,
    slim_child,
)
from kubeforge.trainingjob.status import compute_status

log = logging.getLogger("kubeforge.trainingjob")


class TrainingJobReconciler:
    """The reconcile of one TrainingJob (on the event loop; one per object at a time)."""

    def __init__(self, ctx: OperatorContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.kube = ctx.api
        self.hash_key = self.settings.label("spec-hash")
        self.owner_label = self.settings.label("trainingjob")
        # What we wrote and the watch may not show yet (so we never write it twice):
        self.recent_job: dict[Key, JSON] = {}
        self.recent_svc: dict[Key, str] = {}
        self.written_status: dict[Key, JSON] = {}
        self.rejected: dict[Key, str] = {}
        self.built: dict[Key, tuple[Any, TrainingJobSpec, tjbuild.Desired]] = {}
        # the last view a reconcile found settled: (snapshot, written status)
        self.settled: dict[Key, tuple[Snapshot, JSON | None]] = {}
        self.phases = PhaseTracker(KIND)
        self.guard = RefusalGuard(KIND)
        self._tjs = ctx.index(IDX_TJ)
        self._jobs = ctx.index(IDX_JOBS)
        self._pods = ctx.index(IDX_PODS)
        self._svcs = ctx.index(IDX_SVCS)
        self._workloads = ctx.index(IDX_WORKLOADS)

    # --- bookkeeping ------------------------------------------------------------------------

    def snapshot(self, key: Key) -> Snapshot | None:
        tj = self._tjs.one(key)
        if tj is None:
            return None
        return Snapshot(
            tj=tj,
            job=self._jobs.one(key),
            pods=self._pods.all(key),
            service=self._svcs.one(key),
            workload=self._workloads.one(key) if self.ctx.kueue else None,
            reported=self.ctx.progress.latest(key) if self.ctx.progress is not None else None,
        )

    def forget(self, key: Key) -> None:
        self.recent_job.pop(key, None)
        self.recent_svc.pop(key, None)
        self.written_status.pop(key, None)
        self.rejected.pop(key, None)
        self.built.pop(key, None)
        self.settled.pop(key, None)
        self.phases.forget(key)
        if self.ctx.progress is not None:
            self.ctx.progress.forget(key)
        self.guard.forget(key)

    def job_gone(self, key: Key) -> None:
        self.recent_job.pop(key, None)

    def service_gone(self, key: Key) -> None:
        self.recent_svc.pop(key, None)

    # --- the reconcile ----------------------------------------------------------------------

    def _still_settled(self, key: Key, snap: Snapshot) -> bool:
        """Whether `snap` holds the very objects the last reconcile found settled (index values
        are replaced, never mutated, on every event; our own state changes only through a
        write): then a resync or a repeated event costs nothing."""
        seen = self.settled.get(key)
        return (
            seen is not None
            and seen[1] is self.written_status.get(key)
            and same_view(seen[0], snap)
        )

    def idle(self, key: Key) -> bool:
        """Whether the current view of `key` is the one its last reconcile found settled (the
        resync's check)."""
        snap = self.snapshot(key) if key in self.settled else None
        return snap is not None and self._still_settled(key, snap)

    async def __call__(self, key: Key, snap: Snapshot) -> float | None:
        if self._still_settled(key, snap) or self.guard.holds(key, snap.tj):
            return None
        self.settled.pop(key, None)
        writes = self.kube.write_count
        await self.guard.run(
            key, snap.tj, lambda: self.reconcile(key, snap),
            lambda change: self._amend_status(key, snap.tj, change),
        )
        if self.kube.write_count == writes and key in self.built:
            self.settled[key] = (snap, self.written_status.get(key))
        return None

    async def reconcile(self, key: Key, snap: Snapshot) -> None:
        """Level-based: make the children match the spec, then write the status if it differs."""
        tj = snap.tj
        meta = tj["metadata"]
        if meta.get("deletionTimestamp"):
            return  # children go by owner references
        now = now_rfc3339()
        base_status = self.written_status.get(key) or tj.get("status") or {}
        tj = {**tj, "status": base_status}

        # the spec changes only with the generation: validate and build once per generation
        version = (meta.get("uid"), meta.get("generation"))
        cached = self.built.get(key)
        if cached is not None and cached[0] == version:
            spec, desired = cached[1], cached[2]
        else:
            try:
                spec = TrainingJobSpec.model_validate(tj["spec"])
            except ValidationError as exc:
                await self._invalid(key, tj, exc, now)
                return
            desired = tjbuild.build(tj, spec, self.settings)
            self.built[key] = (version, spec, desired)

        if snap.job is None and base_status.get("phase") in ("Succeeded", "Failed"):
            return  # finished, and its Job is gone (ttlSecondsAfterFinished): never rerun

        job = await self._sync_job(key, tj, snap.job, desired)
        if desired.service is not None:
            await self._sync_service(key, snap.service, desired)

        status = compute_status(
            tj, spec, job, snap.pods, now=now, workload=snap.workload, reported=snap.reported
        )
        await self._write_status(key, tj, base_status, status)

    async def _sync_job(
        self, key: Key, tj: JSON, observed: JSON | None, desired: tjbuild.Desired
    ) -> JSON | None:
        recent = self.recent_job.get(key)
        if (
            observed is not None
            and recent is not None
            and (
                observed["metadata"].get("uid") != recent["metadata"].get("uid")
                or observed["metadata"]["annotations"].get(self.hash_key)
                == recent["metadata"]["annotations"].get(self.hash_key)
            )
        ):
            # the watch has caught up with our write: from now on, trust it
            self.recent_job.pop(key, None)
            recent = None
        current = recent or observed
        if current is not None:
            owners = current["metadata"].get("ownerReferences") or []
            if owners and not any(o.get("uid") == tj["metadata"]["uid"] for o in owners):
                log.warning("Job %s/%s belongs to another object; not touching it", *key)
                return None
            have = current["metadata"]["annotations"].get(self.hash_key)
            if have == desired.job_hash or self.rejected.get(key) == desired.job_hash:
                return current
            try:
                applied = await self.kube.apply(desired.job)
            except ApiError as exc:
                if exc.status == 422:
                    # a change the Job cannot take (its pod template is immutable): say so once
                    self.rejected[key] = desired.job_hash
                    await events.post(
                        self.kube, tj, events.WARNING, "SpecChangeRejected", str(exc)
                    )
                    return current
                raise
            self.recent_job[key] = slim_child(applied)
            return self.recent_job[key]
        try:
            created = await self.kube.create(desired.job_for_create())
        except ApiError as exc:
            if not exc.conflict:
                raise
            got = await self.kube.get("batch/v1", "Job", key[0], key[1])
            if got is None:
                raise
            created = got
        self.recent_job[key] = slim_child(created)
        return self.recent_job[key]

    async def _sync_service(
        self, key: Key, observed: JSON | None, desired: tjbuild.Desired
    ) -> None:
        assert desired.service is not None
        have = observed["metadata"]["annotations"].get(self.hash_key) if observed else None
        if have == desired.service_hash or self.recent_svc.get(key) == desired.service_hash:
            return
        await self.kube.apply(desired.service)
        self.recent_svc[key] = desired.service_hash or ""

    async def _write_status(self, key: Key, tj: JSON, base: JSON, status: JSON) -> None:
        patch = merge_patch(base, status)
        if patch:
            await self.kube.patch_status(API_VERSION, KIND, key[0], key[1], patch)
            self.written_status[key] = status
            await self._announce(tj, base, status)
        self.phases.set(key, status.get("phase", "Pending"))

    async def _amend_status(self, key: Key, tj: JSON, change: Any) -> None:
        """Write `change(current status)` (the refusal guard's writes)."""
        base = self.written_status.get(key) or tj.get("status") or {}
        await self._write_status(key, tj, base, change(base))

    async def _announce(self, tj: JSON, old: JSON, new: JSON) -> None:
        """Events for what a user must see: the phase changes that matter."""
        before, after = old.get("phase"), new.get("phase")
        if before == after:
            return
        msg = new.get("message", "")
        if after == "Failed":
            reason = condition_reason(new, ("Failed",), "Failed")
            await events.post(self.kube, tj, events.WARNING, reason, msg)
        elif after == "Succeeded":
            metrics = ", ".join(f"{k}={v:g}" for k, v in sorted(new.get("metrics", {}).items()))
            await events.post(
                self.kube, tj, events.NORMAL, "Succeeded", f"training finished {metrics}".strip()
            )
        elif after in ("Suspended", "Queued"):
            await events.post(self.kube, tj, events.NORMAL, after, msg)

    async def _invalid(self, key: Key, tj: JSON, exc: ValidationError, now: str) -> None:
        status = invalid_spec_status(tj, exc.errors(), now, condition="Failed")
        await self._write_status(key, tj, tj.get("status") or {}, status)
