"""Which finished trial a TuningStudy chooses, and which of its models (pure): bestTrial by the
selection rule (promote.select, else the objective), the Pareto front of several objectives, the
value objective.target is compared with, and the file promote serves.

A trial with an int8 model: when the study searches the quantize mode, the trial is the model it
chose (valued by its `int8_*` figures, see build.trial_record); otherwise its float and int8
models compete in the rule, each on its own figures (a tie keeps float).
"""

from __future__ import annotations

from typing import Any

from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.tuningstudy import build as tb
from kubeforge.tuningstudy._records import TrialRecord
from kubeforge.tuningstudy.selection import Rule, pareto_front, select

JSON = dict[str, Any]


def selection_rule(spec: TuningStudySpec) -> Rule:
    """promote.select, else the (first) objective's direction, without bounds."""
    sel = spec.promote.select if spec.promote else None
    if sel is not None:
        return Rule(sel.metric, sel.direction, dict(sel.subject_to))
    first = spec.primary_objective
    return Rule(first.metric, first.direction, {})


def _final_metrics(obj: JSON | None) -> dict[str, float]:
    raw = ((obj or {}).get("status") or {}).get("metrics") or {}
    return {k: float(v) for k, v in raw.items() if tb._num(v) is not None}


VARIANTS = ("float", "int8")


def _candidates(
    r: TrialRecord, obj: JSON | None, spec: TuningStudySpec, rule: Rule, qparam: str | None
) -> dict[tuple[int, int], tuple[float | None, dict[str, float]]]:
    """The models a finished trial offers the rule: key (number, variant index) → (its value of
    the rule's metric, its metrics). When the study searches the quantize mode a trial is the
    model it chose (int8 unless `none`); otherwise it offers its float model, and also its int8
    model when it wrote one (quantize fixed by the template), so int8 is chosen when its own
    figures win the rule (a tie keeps float)."""
    objective = spec.primary_objective
    raw = _final_metrics(obj)
    out: dict[tuple[int, int], tuple[float | None, dict[str, float]]] = {}
    if tb.serves_int8(r.params, qparam):
        metrics = tb.int8_metrics(raw)
        # the record is valued by the int8 figures already (objective.strategy applies)
        value = r.value(objective) if rule.metric == objective.metric else metrics.get(rule.metric)
        out[(r.number, 1)] = (value, metrics)
        return out
    value = r.value(objective) if rule.metric == objective.metric else raw.get(rule.metric)
    out[(r.number, 0)] = (value, raw)
    artifacts = ((obj or {}).get("status") or {}).get("artifacts") or {}
    if qparam is None and artifacts.get("modelInt8"):
        metrics = tb.int8_metrics(raw)
        out[(r.number, 1)] = (metrics.get(rule.metric), metrics)
    return out


def best_trial(
    study_name: str,
    records: list[TrialRecord],
    objects: dict[int, JSON],
    spec: TuningStudySpec,
    previous: JSON | None,
    front: list[int] | None = None,
) -> JSON | None:
    """The trial the selection rule picks among the finished ones (with several objectives and
    no promote.select: the first objective's best on the Pareto `front`), and which of its
    models (`variant`). A previous best whose TrainingJob is gone (garbage-collected) stays until
    a better one appears."""
    rule = selection_rule(spec)
    objective = spec.primary_objective
    qparam = tb.quantize_parameter(spec)
    complete = {r.number: r for r in records if r.state == "complete"}
    pool = (
        complete
        if front is None or (spec.promote and spec.promote.select)
        else {n: complete[n] for n in front}
    )
    candidates: dict[tuple[int, int], tuple[float | None, dict[str, float]]] = {}
    for number, r in pool.items():
        candidates.update(_candidates(r, objects.get(number), spec, rule, qparam))
    chosen = select(candidates, rule)
    out: JSON | None = None
    if chosen is not None:
        number, variant = chosen
        best = complete[number]
        obj = objects.get(number) or {}
        status = obj.get("status") or {}
        out = {
            "name": tb.trial_name(study_name, number),
            "number": number,
            "params": best.params,
            "value": candidates[chosen][0],
            "metrics": dict(status.get("metrics") or {}),
        }
        if spec.multi_objective:
            out["values"] = dict(best.finals)
        artifacts = status.get("artifacts") or {}
        if artifacts.get("model"):
            out["model"] = artifacts["model"]
        if artifacts.get("modelInt8"):
            out["modelInt8"] = artifacts["modelInt8"]
        if artifacts.get("modelInt8") or variant:
            out["variant"] = VARIANTS[variant]
    if previous and previous.get("value") is not None:
        prev_number = previous.get("number")
        gone = prev_number is not None and prev_number not in objects
        prev_metrics = previous.get("metrics") or {}
        if previous.get("variant") == "int8":
            prev_metrics = tb.int8_metrics(prev_metrics)
        # its value of the rule's metric (the rule may have changed since it was recorded)
        prev_value = (
            previous["value"] if rule.metric == objective.metric else prev_metrics.get(rule.metric)
        )
        if (
            gone
            and prev_value is not None
            and rule.feasible(prev_metrics)
            and (out is None or rule.better(float(prev_value), out["value"]))
        ):
            return previous
    return out


def promoted_model(best: JSON | None) -> str | None:
    """The file promote serves: the chosen trial's int8 model when its variant is int8."""
    if not best:
        return None
    if best.get("variant") == "int8" and best.get("modelInt8"):
        return str(best["modelInt8"])
    model = best.get("model")
    return str(model) if model else None


def front_of(spec: TuningStudySpec, name: str, records: list[TrialRecord]) -> list[JSON]:
    """status.paretoFront (all of it: the caller trims it)."""
    metrics = [m for m, _ in spec.objective_list]
    points = {}
    for r in records:
        values = r.values(metrics) if r.state == "complete" else None
        if values is not None:
            points[r.number] = values
    by_number = {r.number: r for r in records}
    return [
        {
            "name": tb.trial_name(name, n),
            "number": n,
            "values": dict(zip(metrics, points[n], strict=True)),
            "params": by_number[n].params,
        }
        for n in pareto_front(points, [d for _, d in spec.objective_list])
    ]


def target_value(
    records: list[TrialRecord], objects: dict[int, JSON], spec: TuningStudySpec
) -> float | None:
    """The best objective value among finished trials that keep promote.select's bounds
    (single objective; what objective.target is compared with)."""
    if spec.multi_objective:
        return None
    objective = spec.primary_objective
    rule = Rule(objective.metric, objective.direction, selection_rule(spec).bounds)
    candidates = {
        r.number: (r.value(objective), _final_metrics(objects.get(r.number)))
        for r in records
        if r.state == "complete"
    }
    chosen = select(candidates, rule)
    return None if chosen is None else candidates[chosen][0]
