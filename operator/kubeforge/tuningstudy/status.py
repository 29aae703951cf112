"""TuningStudy: observed trials → status, and the one decision of a reconcile (pure).

`decide()` is the whole brain of the reconcile: from the study object and its trial
TrainingJobs it returns what to write (trial reports to record, trials to stop, trials to create,
the ModelDeployment to promote, the new status). The handler only carries it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubeforge.api.tuningstudy import Objective, TuningStudySpec
from kubeforge.conditions import set_condition
from kubeforge.tuningstudy import build as tb
from kubeforge.tuningstudy.search import (
    SearchState,
    TrialRecord,
    better,
    effective_max_trials,
    grid_size,
    target_reached,
)

JSON = dict[str, Any]


@dataclass
class Decision:
    status: JSON
    reports: dict[str, str] = field(default_factory=dict)
    """Trial name → new value of its reports annotation."""
    system_attrs: dict[str, str] = field(default_factory=dict)
    """Trial name → new value of its system-attrs annotation (a pruner recorded something)."""
    stop: dict[str, str] = field(default_factory=dict)
    """Trial name → stop reason (pruned, study-succeeded, study-failed) to record and deliver."""
    create: list[JSON] = field(default_factory=list)
    """Trial TrainingJobs to create (in number order)."""
    promote: JSON | None = None
    """ModelDeployment apply body (spec.model only)."""


def is_running(record: TrialRecord) -> bool:
    return record.state == "running"


def counts(records: list[TrialRecord], total: int) -> JSON:
    c = {"total": total, "running": 0, "succeeded": 0, "failed": 0, "pruned": 0}
    for r in records:
        key = {
            "running": "running",
            "complete": "succeeded",
            "failed": "failed",
            "pruned": "pruned",
        }[r.state]
        c[key] += 1
    return c


def best_trial(
    study_name: str,
    records: list[TrialRecord],
    objects: dict[int, JSON],
    objective: Objective,
    previous: JSON | None,
) -> JSON | None:
    """The best finished trial; a previous best whose TrainingJob is gone (garbage-collected)
    stays until a better one appears."""
    best: TrialRecord | None = None
    best_value: float | None = None
    for r in records:
        if r.state != "complete":
            continue
        v = r.value(objective)
        if v is not None and better(v, best_value, objective.direction):
            best, best_value = r, v
    out: JSON | None = None
    if best is not None and best_value is not None:
        obj = objects.get(best.number) or {}
        status = obj.get("status") or {}
        out = {
            "name": tb.trial_name(study_name, best.number),
            "number": best.number,
            "params": best.params,
            "value": best_value,
            "metrics": dict(status.get("metrics") or {}),
        }
        model = (status.get("artifacts") or {}).get("model")
        if model:
            out["model"] = model
    if previous and previous.get("value") is not None:
        prev_number = previous.get("number")
        gone = prev_number is not None and prev_number not in objects
        if gone and (out is None or better(previous["value"], out["value"], objective.direction)):
            return previous
    return out


def _stop_delivered(obj: JSON) -> bool:
    return bool(tb.stop_reason(obj))


def decide(study: JSON, spec: TuningStudySpec, trials: list[JSON], now: str) -> Decision:
    """What one reconcile of `study` must do, given its trial TrainingJobs (`trials`)."""
    meta = study["metadata"]
    name = meta["name"]
    key = f"{meta.get('namespace', '')}/{name}"
    uid = meta.get("uid")
    prev: JSON = dict(study.get("status") or {})
    objective = spec.objective

    objects: dict[int, JSON] = {}
    records: list[TrialRecord] = []
    reports: dict[str, str] = {}
    for obj in trials:
        owners = (obj.get("metadata") or {}).get("ownerReferences") or []
        if uid and owners and not any(o.get("uid") == uid for o in owners):
            continue  # a leftover of an older study of the same name
        rec = tb.trial_record(obj, objective)
        if rec is None or rec.number in objects:
            continue
        objects[rec.number] = obj
        records.append(rec)
        if rec.reports != tb.recorded_reports(obj):
            reports[obj["metadata"]["name"]] = tb.reports_annotation(rec.reports)
    records.sort(key=lambda r: r.number)

    prev_total = int((prev.get("trials") or {}).get("total") or 0)
    total = max(prev_total, max((r.number for r in records), default=-1) + 1)
    limit = effective_max_trials(spec)
    running = [r for r in records if is_running(r)]
    c = counts(records, total)
    best = best_trial(name, records, objects, objective, prev.get("bestTrial"))
    best_value = best.get("value") if best else None

    decision = Decision(status={}, reports=reports)
    phase, reason, message = "Running", "TrialsRunning", ""
    max_failed = max(1, spec.max_failed_trials)
    if c["failed"] >= max_failed:
        phase, reason = "Failed", "MaxFailedTrialsReached"
        message = f"{c['failed']} trials failed (maxFailedTrials {spec.max_failed_trials})"
    elif target_reached(best_value, objective):
        phase, reason = "Succeeded", "TargetReached"
        message = (
            f"trial {best['name'] if best else ''} reached {objective.metric}={best_value:g} "
            f"(target {objective.target:g})"
        )
    elif total >= limit and not running:
        size = grid_size(spec)
        exhausted = size is not None and size <= spec.max_trials
        if best is None:
            phase, reason = "Failed", "NoTrialSucceeded"
            message = f"all {total} trials finished and none reported {objective.metric}"
        else:
            phase = "Succeeded"
            reason = "GridExhausted" if exhausted else "MaxTrialsReached"
            message = f"{total} trials finished; best {objective.metric}={best_value:g}"
    elif not records and total == 0:
        phase, reason, message = "Running", "Starting", "suggesting the first trials"

    if phase in ("Succeeded", "Failed"):
        why = tb.STUDY_SUCCEEDED if phase == "Succeeded" else tb.STUDY_FAILED
        for r in running:
            obj = objects[r.number]
            if not _stop_delivered(obj):
                decision.stop[obj["metadata"]["name"]] = why
    else:
        # The search is rebuilt only when there is something to decide: a running trial with a
        # new report (pruning is judged when a report arrives, as in Optuna) or a free slot.
        fresh = {
            r.number
            for r in running
            if objects[r.number]["metadata"]["name"] in reports
            and not _stop_delivered(objects[r.number])
        }
        slots = spec.parallelism - len(running)
        prunable = spec.early_stopping.name != "none" and bool(fresh)
        if not prunable and not (slots > 0 and total < limit):
            fresh = set()
        state = (
            SearchState(spec, records, key, next_number=total)
            if (prunable or (slots > 0 and total < limit))
            else None
        )
        decisions = state.prune_decisions() if state is not None and prunable else {}
        for number, (prune, attrs) in decisions.items():
            if number not in fresh:
                continue
            obj = objects[number]
            tname = obj["metadata"]["name"]
            rec = next(r for r in records if r.number == number)
            if attrs != rec.system_attrs:
                decision.system_attrs[tname] = tb._dumps(attrs)
            if prune and not _stop_delivered(obj):
                decision.stop[tname] = tb.PRUNED
        while state is not None and slots > 0 and total < limit:
            s = state.suggest()
            decision.create.append(
                tb.trial_manifest(
                    study, spec, s.number, s.params, s.system_attrs, s.study_system_attrs
                )
            )
            total = s.number + 1
            slots -= 1
            c["running"] += 1
        c["total"] = total
        if decision.create:
            message = f"{c['running']} trials running"
        elif running:
            message = f"{len(running)} trials running"

    if phase in ("Succeeded", "Failed") and spec.promote and phase == "Succeeded":
        model = best.get("model") if best else None
        if model:
            decision.promote = tb.promote_manifest(study, spec.promote.model_deployment, model)

    decision.status = status_doc(
        prev, phase, reason, message, c, best, limit, spec, meta.get("generation"), now
    )
    return decision


def status_doc(
    prev: JSON,
    phase: str,
    reason: str,
    message: str,
    c: JSON,
    best: JSON | None,
    limit: int,
    spec: TuningStudySpec,
    generation: int | None,
    now: str,
) -> JSON:
    """The status (wire shape), conditions kept the Kubernetes way."""
    conds = [dict(x) for x in prev.get("conditions") or []]
    gen = generation
    set_condition(
        conds,
        "Running",
        phase == "Running",
        reason if phase == "Running" else phase,
        message if phase == "Running" else "",
        now=now,
        observed_generation=gen,
    )
    set_condition(
        conds,
        "Succeeded",
        phase == "Succeeded",
        reason if phase == "Succeeded" else "NotSucceeded",
        message if phase == "Succeeded" else "",
        now=now,
        observed_generation=gen,
    )
    set_condition(
        conds,
        "Failed",
        phase == "Failed",
        reason if phase == "Failed" else "NotFailed",
        message if phase == "Failed" else "",
        now=now,
        observed_generation=gen,
    )
    done = c["succeeded"] + c["failed"] + c["pruned"]
    out: JSON = {
        "phase": phase,
        "message": message,
        "conditions": conds,
        "trials": c,
        "progress": f"{done}/{limit}",
        "startTime": prev.get("startTime") or now,
    }
    if gen is not None:
        out["observedGeneration"] = gen
    if best is not None:
        out["bestTrial"] = best
    if phase in ("Succeeded", "Failed"):
        out["completionTime"] = (
            prev.get("completionTime")
            if prev.get("phase") == phase and prev.get("completionTime")
            else now
        )
    return out
