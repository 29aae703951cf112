"""TuningStudy's kopf wiring (thin): indexes of the studies and their trial TrainingJobs,
level-based event handlers that only queue a reconcile, and the one reconcile, which carries out
`status.decide()`.

Nothing about the search lives here or in memory: the search state is rebuilt from the trial
TrainingJobs on every decision. The only memory kept is what we wrote and the watch may not show
yet (so a trial is never created twice and parallelism is never exceeded between our write and
its watch event). A trial is asked to stop by an annotation on the trial TrainingJob (its owner
writes only its child); the progress endpoint hands that request to the trial's trainer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from kubeforge import events
from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.apply import ApiError, AsyncKube, merge_patch
from kubeforge.conditions import condition_reason, invalid_spec_status, now_rfc3339
from kubeforge.context import OperatorContext
from kubeforge.controller import Controller, Key, slim_owner
from kubeforge.metrics import PhaseTracker
from kubeforge.refusal import RefusalGuard
from kubeforge.tuningstudy import build as tb
from kubeforge.tuningstudy.search import check_runnable, off_loop
from kubeforge.tuningstudy.status import decide
from kubeforge.tuningstudy.warmstart import SourceStudy

log = logging.getLogger("kubeforge.tuningstudy")

GROUP, VERSION = "kubeforge.io", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL, KIND = "tuningstudies", "TuningStudy"
TRIAL_PLURAL = "trainingjobs"

IDX_STUDIES = "kubeforge-tuningstudies"
IDX_TRIALS = "kubeforge-tuningstudy-trials"

JSON = dict[str, Any]
_OUR_ANNOTATIONS = (tb.PARAMS, tb.SYSTEM_ATTRS, tb.STUDY_SYSTEM_ATTRS, tb.REPORTS, tb.STOP)


def slim_study(body: Any) -> JSON:
    slim = slim_owner(body, KIND, API_VERSION)
    # a later study's warmStart.fromStudies takes this study's trials completed before it
    slim["metadata"]["creationTimestamp"] = body["metadata"].get("creationTimestamp")
    return slim


def slim_trial(body: Any) -> JSON:
    meta = body["metadata"]
    ann = meta.get("annotations") or {}
    status = body.get("status") or {}
    return {
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "labels": {
                k: v for k, v in (meta.get("labels") or {}).items() if k.startswith("kubeforge.io/")
            },
            "annotations": {k: ann[k] for k in _OUR_ANNOTATIONS if k in ann},
            "ownerReferences": meta.get("ownerReferences") or [],
        },
        "status": {
            k: status[k]
            for k in ("phase", "metrics", "progress", "artifacts", "completionTime")
            if k in status
        },
    }


def study_of(body: Any) -> str | None:
    """The name of the TuningStudy that controls this TrainingJob, if any."""
    for ref in body["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("controller"):
            return str(ref.get("name"))
    return None


def _rv(obj: JSON | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass(frozen=True)
class Snapshot:
    study: JSON
    trials: list[JSON]
    sources: tuple[SourceStudy, ...] = ()
    """The studies of spec.warmStart.fromStudies with their trials (warm start)."""


class TuningStudyReconciler:
    """The reconcile of one TuningStudy (on the event loop; one per study at a time).

    Reconciles of different studies interleave at each await: every piece of state here is
    either keyed by the study (one reconcile of it at a time) or by a trial of one study.
    """

    def __init__(self, ctx: OperatorContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.kube: AsyncKube = ctx.api
        self.written_status: dict[Key, JSON] = {}
        self.recent: dict[Key, dict[str, JSON]] = {}
        """Trials we created or patched that the watch may not show yet (name → object)."""
        self.promoted: dict[Key, str] = {}
        self.phases = PhaseTracker(KIND)
        self.guard = RefusalGuard(KIND)

    # --- bookkeeping (event loop) ---

    def snapshot(self, key: Key) -> Snapshot | None:
        study = self.ctx.one(IDX_STUDIES, key)
        if study is None:
            return None
        warm = (study.get("spec") or {}).get("warmStart") or {}
        names = warm.get("fromStudies") if isinstance(warm, dict) else None
        sources = tuple(
            SourceStudy(
                name=name,
                study=self.ctx.one(IDX_STUDIES, (key[0], name)),
                trials=self.ctx.all(IDX_TRIALS, (key[0], name)),
            )
            for name in (names if isinstance(names, list) else [])
            if isinstance(name, str)
        )
        return Snapshot(study=study, trials=self.ctx.all(IDX_TRIALS, key), sources=sources)

    def forget(self, key: Key) -> None:
        self.written_status.pop(key, None)
        self.recent.pop(key, None)
        self.promoted.pop(key, None)
        self.phases.forget(key)
        self.guard.forget(key)

    # --- the reconcile (event loop) ---

    def _trials(self, key: Key, observed: list[JSON]) -> list[JSON]:
        """The watch's trials, with our own newer writes laid over them."""
        recent = dict(self.recent.get(key) or {})
        by_name = {t["metadata"]["name"]: t for t in observed}
        for name, mine in list(recent.items()):
            seen = by_name.get(name)
            if seen is not None and _rv(seen) >= _rv(mine):
                recent.pop(name)  # the watch caught up
                continue
            by_name[name] = mine
        self.recent[key] = recent
        return list(by_name.values())

    def _remember(self, key: Key, obj: JSON) -> None:
        self.recent.setdefault(key, {})[obj["metadata"]["name"]] = slim_trial(obj)

    async def __call__(self, key: Key, snap: Snapshot) -> float | None:
        if self.guard.holds(key, snap.study):
            return None
        return await self.guard.run(
            key, snap.study, lambda: self._reconcile(key, snap),
            lambda change: self._amend_status(key, snap.study, change),
        )

    async def _amend_status(self, key: Key, study: JSON, change: Any) -> None:
        """Write `change(current status)` (the refusal guard's writes)."""
        base = self.written_status.get(key) or study.get("status") or {}
        await self._write_status(key, study, base, change(base))

    async def _reconcile(self, key: Key, snap: Snapshot) -> float | None:
        study = snap.study
        if study["metadata"].get("deletionTimestamp"):
            return None
        now = now_rfc3339()
        base = self.written_status.get(key) or study.get("status") or {}
        study = {**study, "status": base}
        try:
            spec = TuningStudySpec.model_validate(study["spec"])
        except ValidationError as exc:
            await self._invalid(key, study, exc, now)
            return None
        trials = self._trials(key, snap.trials)
        # Optuna and anything proportional to the study's size run off the event loop
        await off_loop(check_runnable, spec)
        d = await off_loop(decide, study, spec, trials, now, snap.sources)
        ns = key[0]
        for name, value in d.reports.items():
            patch = {"metadata": {"annotations": {tb.REPORTS: value}}}
            await self._patch_trial(key, ns, name, patch)
        for name, value in d.system_attrs.items():
            patch = {"metadata": {"annotations": {tb.SYSTEM_ATTRS: value}}}
            await self._patch_trial(key, ns, name, patch)
        for name, reason in d.stop.items():
            # the record and the request at once: the trial's trainer gets it as the answer to
            # its next progress report
            await self._patch_trial(key, ns, name, {"metadata": {"annotations": {tb.STOP: reason}}})
            if reason == tb.PRUNED:
                await events.post(
                    self.kube, study, events.NORMAL, "TrialPruned", f"trial {name} pruned"
                )
        for manifest in d.create:
            await self._create_trial(key, manifest)
        if d.promote is not None:
            await self._promote(key, study, d.promote)
        for kind, reason, message in d.events:
            await events.post(self.kube, study, kind, reason, message)
        await self._write_status(key, study, base, d.status)
        return None

    async def _patch_trial(self, key: Key, ns: str, name: str, patch: JSON) -> None:
        try:
            obj = await self.kube.patch(API_VERSION, "TrainingJob", ns, name, patch)
        except ApiError as exc:
            if exc.not_found:
                return
            raise
        self._remember(key, obj)

    async def _create_trial(self, key: Key, manifest: JSON) -> None:
        try:
            obj = await self.kube.create(manifest)
        except ApiError as exc:
            if not exc.conflict:
                raise
            got = await self.kube.get(
                API_VERSION, "TrainingJob", key[0], manifest["metadata"]["name"]
            )
            if got is None:
                raise
            owners = got["metadata"].get("ownerReferences") or []
            uid = manifest["metadata"]["ownerReferences"][0]["uid"]
            if not any(o.get("uid") == uid for o in owners):
                # a trial of an older study of the same name, not yet garbage-collected: retry
                raise
            obj = got
        self._remember(key, obj)

    async def _promote(self, key: Key, study: JSON, body: JSON) -> None:
        uri = body["spec"]["model"]["uri"]
        if self.promoted.get(key) == uri:
            return
        name = body["metadata"]["name"]
        current = await self.kube.get(API_VERSION, "ModelDeployment", key[0], name)
        model = ((current or {}).get("spec") or {}).get("model") or {}
        if model.get("fromTuningStudy") == key[1] or model.get("uri") == uri:
            self.promoted[key] = uri  # already pointing at this study / this model
            return
        await self.kube.apply(body, parse=False)
        self.promoted[key] = uri
        await events.post(
            self.kube, study, events.NORMAL, "Promoted", f"ModelDeployment {name} now serves {uri}"
        )

    async def _write_status(self, key: Key, study: JSON, base: JSON, status: JSON) -> None:
        patch = merge_patch(base, status)
        if patch:
            await self.kube.patch_status(API_VERSION, KIND, key[0], key[1], patch)
            self.written_status[key] = status
            before, after = base.get("phase"), status.get("phase")
            if before != after and after in ("Succeeded", "Failed"):
                reason = condition_reason(status, (after,), after)
                kind = events.NORMAL if after == "Succeeded" else events.WARNING
                await events.post(self.kube, study, kind, reason, status.get("message", ""))
        self.phases.set(key, status.get("phase", "Pending"))

    async def _invalid(self, key: Key, study: JSON, exc: ValidationError, now: str) -> None:
        status = invalid_spec_status(study, exc.errors(), now, condition="Failed")
        await self._write_status(key, study, study.get("status") or {}, status)


def register(ctx: OperatorContext) -> Controller[Snapshot]:
    """Register TuningStudy's indexes and event handlers on `ctx.registry`; returns its
    controller (started by main)."""
    s = ctx.settings
    rec = TuningStudyReconciler(ctx)
    ctl: Controller[Snapshot] = Controller(
        KIND, snapshot=rec.snapshot, reconcile=rec, workers=s.concurrency, forget=rec.forget
    )
    ctl.reconciler = rec  # type: ignore[attr-defined]
    selector = {tb.STUDY_LABEL: kopf.PRESENT}

    @ctx.index_handler(GROUP, VERSION, PLURAL, id=IDX_STUDIES)
    async def index_studies(**kw: Any) -> Any:
        return {(kw["namespace"], kw["name"]): slim_study(kw["body"])}

    @ctx.index_handler(GROUP, VERSION, TRIAL_PLURAL, id=IDX_TRIALS, labels=selector)
    async def index_trials(**kw: Any) -> Any:
        study = study_of(kw["body"])
        if study is None:
            return None
        return {(kw["namespace"], study): slim_trial(kw["body"])}

    @ctx.event_handler(GROUP, VERSION, PLURAL, id="kubeforge-tuningstudy-event")
    async def on_study(**kw: Any) -> None:
        key = (kw["namespace"], kw["name"])
        if kw.get("type") == "DELETED":
            ctl.forget(key)
        else:
            ctl.enqueue(key)

    @ctx.event_handler(
        GROUP,
        VERSION,
        TRIAL_PLURAL,
        id="kubeforge-tuningstudy-trial-event",
        labels=selector,
    )
    async def on_trial(**kw: Any) -> None:
        study = study_of(kw["body"])
        if study is not None:
            ctl.enqueue((kw["namespace"], study))

    def all_keys() -> list[Key]:
        return list(ctx.index(IDX_STUDIES))

    ctl.all_keys = all_keys  # type: ignore[attr-defined]
    ctx.controllers.append(ctl)
    return ctl
