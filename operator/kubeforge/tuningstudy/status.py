"""TuningStudy: observed trials → status, and the one decision of a reconcile (pure).

`decide()` is the whole brain of the reconcile: from the study object and its trial
TrainingJobs it returns what to write (trial reports to record, trials to stop, trials to create,
the ModelDeployment to promote, the new status). The handler only carries it out.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeforge.api._tuning_status import MAX_PARETO_FRONT
from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.conditions import set_condition
from kubeforge.tuningstudy import build as tb
from kubeforge.tuningstudy import warmstart
from kubeforge.tuningstudy._records import TrialRecord, target_reached
from kubeforge.tuningstudy._space import distributions, effective_max_trials, grid_size
from kubeforge.tuningstudy.choice import (
    best_trial,
    front_of,
    promoted_model,
    selection_rule,
    target_value,
)
from kubeforge.tuningstudy.search import SearchState

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
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """Events to post about the study: (type, reason, message)."""


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


def budget_spent(spec: TuningStudySpec, start: str | None, now: str) -> bool:
    """Whether budget.maxDuration has passed since the study started (`start`: its startTime,
    None on the first reconcile)."""
    seconds = spec.budget.seconds() if spec.budget else None
    if seconds is None or not start:
        return False
    elapsed = _dt.datetime.fromisoformat(now) - _dt.datetime.fromisoformat(start)
    return elapsed.total_seconds() >= seconds


def _stop_delivered(obj: JSON) -> bool:
    return bool(tb.stop_reason(obj))


def decide(
    study: JSON,
    spec: TuningStudySpec,
    trials: list[JSON],
    now: str,
    sources: Sequence[warmstart.SourceStudy] = (),
) -> Decision:
    """What one reconcile of `study` must do, given its trial TrainingJobs (`trials`) and the
    studies its warmStart.fromStudies names (`sources`)."""
    meta = study["metadata"]
    name = meta["name"]
    key = f"{meta.get('namespace', '')}/{name}"
    uid = meta.get("uid")
    prev: JSON = dict(study.get("status") or {})
    objective = spec.primary_objective
    metrics = [m for m, _ in spec.objective_list] if spec.multi_objective else []
    qparam = tb.quantize_parameter(spec)

    objects: dict[int, JSON] = {}
    records: list[TrialRecord] = []
    reports: dict[str, str] = {}
    for obj in trials:
        owners = (obj.get("metadata") or {}).get("ownerReferences") or []
        if uid and owners and not any(o.get("uid") == uid for o in owners):
            continue  # a leftover of an older study of the same name
        rec = tb.trial_record(obj, objective, metrics, qparam)
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
    front = front_of(spec, name, records) if spec.multi_objective else None
    best = best_trial(
        name,
        records,
        objects,
        spec,
        prev.get("bestTrial"),
        [p["number"] for p in front] if front is not None else None,
    )
    best_value = best.get("value") if best else None
    rule = selection_rule(spec)
    reached = target_value(records, objects, spec)
    out_of_time = budget_spent(spec, prev.get("startTime"), now)

    warm = warmstart.plan(study, spec, distributions(spec), sources, started=total > 0)
    decision = Decision(status={}, reports=reports)
    phase, reason, message = "Running", "TrialsRunning", ""
    max_failed = max(1, spec.max_failed_trials)
    if c["failed"] >= max_failed:
        phase, reason = "Failed", "MaxFailedTrialsReached"
        message = f"{c['failed']} trials failed (maxFailedTrials {spec.max_failed_trials})"
    elif target_reached(reached, objective):
        phase, reason = "Succeeded", "TargetReached"
        message = f"a trial reached {objective.metric}={reached:g} (target {objective.target:g})"
    elif (total >= limit or out_of_time) and not running:
        size = grid_size(spec)
        exhausted = size is not None and size <= spec.max_trials
        if best is None and rule.bounds and c["succeeded"]:
            phase, reason = "Failed", "NoTrialSelected"
            message = (
                f"all {total} trials finished and none keeps promote.select.subjectTo "
                f"({', '.join(sorted(rule.bounds))})"
            )
        elif best is None:
            phase, reason = "Failed", "NoTrialSucceeded"
            what = ", ".join(metrics) if metrics else objective.metric
            message = f"all {total} trials finished and none reported {what}"
        else:
            phase = "Succeeded"
            reason = "GridExhausted" if exhausted else "MaxTrialsReached"
            if total < limit:
                reason = "MaxDurationReached"
            message = f"{total} trials finished; best {rule.metric}={best_value:g}"
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
        slots = 0 if out_of_time else spec.parallelism - len(running)
        prunable = spec.early_stopping.name != "none" and bool(fresh)
        if not prunable and not (slots > 0 and total < limit):
            fresh = set()
        state = (
            SearchState(
                spec, records, key, next_number=total, warm=warm.trials if warm else None
            )
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
        elif running and out_of_time and total < limit:
            message = (
                f"budget.maxDuration reached: no new trials; {len(running)} running trials finish"
            )
        elif running:
            message = f"{len(running)} trials running"

    deployment = spec.promote.model_deployment if spec.promote else None
    if phase == "Succeeded" and deployment:
        model = promoted_model(best)
        if model:
            decision.promote = tb.promote_manifest(study, deployment, model)

    decision.status = status_doc(
        prev, phase, reason, message, c, best, limit, spec, meta.get("generation"), now
    )
    if front is not None:
        decision.status["paretoFront"] = front[:MAX_PARETO_FRONT]
        decision.status["paretoFrontSize"] = len(front)
    if warm is not None:
        _warm_status(decision, prev, warm, meta.get("generation"), now)
    return decision


def _warm_status(
    decision: Decision, prev: JSON, warm: warmstart.WarmStartPlan, generation: int | None, now: str
) -> None:
    """status.warmStart, the WarmStarted condition, and an Event when its message changes and
    something was left out (a missing study, skipped trials)."""
    decision.status["warmStart"] = warm.status
    ok, reason, message = warm.condition
    before: JSON = next(
        (c for c in prev.get("conditions") or [] if c.get("type") == warmstart.CONDITION), {}
    )
    set_condition(
        decision.status["conditions"],
        warmstart.CONDITION,
        ok,
        reason,
        message,
        now=now,
        observed_generation=generation,
    )
    if warm.warning and before.get("message") != message:
        decision.events.append(("Warning", reason, warm.warning))


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
