"""warmStart: the earlier trials a study's sampler starts from (pure).

Two sources, in this order: `spec.warmStart.trials` (given in the spec), then the trials of the
studies named in `spec.warmStart.fromStudies`, each study's by trial number. From an earlier
study, a trial counts when its TrainingJob is that study's (owner uid), it succeeded, and it had
completed when this study was created (`status.completionTime <= metadata.creationTimestamp`):
the set is fixed, so every rebuild of the study sees the same earlier trials, whether the other
study still runs or not. Its values are its final metrics of this study's objectives (a trial
whose searched quantize mode chose int8 by its int8 figures, as in the study itself).

What does not fit is left out, never a failure: parameters this searchSpace lacks are ignored
(the trial is kept), a trial lacking one of this searchSpace's parameters, with a value outside
its range or choices, or lacking an objective metric is skipped, and a study that does not exist
gives nothing. The `WarmStarted` condition and an Event say so, naming
`spec.warmStart.fromStudies[i]`.

Once the study has trials, the number of earlier trials is recorded (`status.warmStart.trials`)
and kept: earlier trials that disappear later (their study was deleted) become placeholders, so
the rebuilt study numbers its trials as before (NSGA-II's recorded parents are trial ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.tuningstudy import build as tb
from kubeforge.tuningstudy._trials import earlier_trial, placeholder, warm_trials

JSON = dict[str, Any]

CONDITION = "WarmStarted"
LOADED = "EarlierTrialsLoaded"
SKIPPED = "EarlierTrialsSkipped"
NOT_FOUND = "SourceStudyNotFound"
SKIP_EXAMPLES = 3
"""Skipped trials named in the condition's message (the rest are counted)."""


@dataclass(frozen=True)
class SourceStudy:
    """A study named in fromStudies, as the operator's indexes hold it."""

    name: str
    study: JSON | None
    """The TuningStudy object (None: not found in the namespace)."""
    trials: list[JSON] = field(default_factory=list)
    """Its trial TrainingJobs."""


@dataclass
class WarmStartPlan:
    trials: list[FrozenTrial]
    """The earlier trials, in order, for the rebuilt study."""
    status: JSON
    """status.warmStart."""
    condition: tuple[bool, str, str]
    """WarmStarted: (status, reason, message)."""
    warning: str | None = None
    """An Event's message when something was left out."""


def _created(study: JSON) -> str | None:
    meta = study.get("metadata") or {}
    return meta.get("creationTimestamp") or (study.get("status") or {}).get("startTime")


def _completed_by(trial: JSON, cutoff: str | None) -> bool:
    status = trial.get("status") or {}
    if status.get("phase") != "Succeeded":
        return False
    done = status.get("completionTime")
    # RFC 3339 in UTC with a Z, as the API server writes it: text order is time order
    return cutoff is None or (bool(done) and str(done) <= cutoff)


def _from_study(
    spec: TuningStudySpec,
    dists: dict[str, BaseDistribution],
    source: SourceStudy,
    cutoff: str | None,
) -> tuple[list[FrozenTrial], list[str], set[str]]:
    """(earlier trials, why each skipped one was skipped, parameters ignored) of one study."""
    assert source.study is not None
    uid = (source.study.get("metadata") or {}).get("uid")
    metrics = [m for m, _ in spec.objective_list]
    qparam = tb.quantize_parameter(spec)
    found: list[tuple[int, JSON]] = []
    for obj in source.trials:
        owners = (obj.get("metadata") or {}).get("ownerReferences") or []
        number = tb.trial_number(obj)
        if number is None or (uid and not any(o.get("uid") == uid for o in owners)):
            continue  # not a trial, or a leftover of an older study of that name
        if _completed_by(obj, cutoff):
            found.append((number, obj))
    out: list[FrozenTrial] = []
    skipped: list[str] = []
    ignored: set[str] = set()
    for number, obj in sorted(found, key=lambda x: x[0]):
        params = tb.trial_params(obj)
        raw = (obj.get("status") or {}).get("metrics") or {}
        if tb.serves_int8(params, qparam):
            raw = tb.int8_metrics(raw)
        ignored.update(k for k in params if k not in dists)
        params = {k: v for k, v in params.items() if k in dists}
        missing = [k for k in dists if k not in params]
        values = [tb._num(raw.get(m)) for m in metrics]
        if missing:
            skipped.append(f"trial {number} lacks {', '.join(missing)}")
            continue
        lacking = [m for m, v in zip(metrics, values, strict=True) if v is None]
        if lacking:
            skipped.append(f"trial {number} has no {', '.join(lacking)}")
            continue
        try:
            out.append(earlier_trial(spec, dists, params, [float(v or 0.0) for v in values]))
        except ValueError:
            outside = ", ".join(f"{k}={v!r}" for k, v in params.items() if not _fits(dists[k], v))
            skipped.append(f"trial {number} is outside searchSpace ({outside})")
    return out, skipped, ignored


def _fits(dist: BaseDistribution, value: Any) -> bool:
    """Whether `value` is a value of `dist` (a choice, or within the range and step)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def plan(
    study: JSON,
    spec: TuningStudySpec,
    dists: dict[str, BaseDistribution],
    sources: Sequence[SourceStudy],
    started: bool,
) -> WarmStartPlan | None:
    """The earlier trials of `study` (None: no warmStart). `sources`: the studies of
    fromStudies, in order; `started`: whether the study has trials (its recorded count binds)."""
    if spec.warm_start is None:
        return None
    name = (study.get("metadata") or {}).get("name")
    namespace = (study.get("metadata") or {}).get("namespace") or ""
    trials = warm_trials(spec, dists)
    given = len(trials)
    cutoff = _created(study)
    by_name = {s.name: s for s in sources}
    reports: list[JSON] = []
    problems: list[str] = []
    reason = LOADED
    for i, source_name in enumerate(spec.warm_start.from_studies):
        where = f"spec.warmStart.fromStudies[{i}]"
        source = by_name.get(source_name)
        if source_name == name:
            problems.append(f"{where}: a study cannot warm-start from itself")
            reports.append({"name": source_name, "trials": 0, "skipped": 0, "found": True})
            reason = NOT_FOUND
            continue
        if source is None or source.study is None:
            problems.append(
                f"{where}: TuningStudy {source_name!r} not found in namespace {namespace!r}"
            )
            reports.append({"name": source_name, "trials": 0, "skipped": 0, "found": False})
            reason = NOT_FOUND
            continue
        got, skipped, ignored = _from_study(spec, dists, source, cutoff)
        trials.extend(got)
        reports.append(
            {"name": source_name, "trials": len(got), "skipped": len(skipped), "found": True}
        )
        if skipped:
            shown = "; ".join(skipped[:SKIP_EXAMPLES])
            more = f" and {len(skipped) - SKIP_EXAMPLES} more" if len(skipped) > SKIP_EXAMPLES else ""
            problems.append(f"{where} ({source_name}): skipped {len(skipped)}: {shown}{more}")
            if reason == LOADED:
                reason = SKIPPED
        if ignored:
            problems.append(
                f"{where} ({source_name}): parameters not in searchSpace ignored: "
                f"{', '.join(sorted(ignored))}"
            )
    recorded = ((study.get("status") or {}).get("warmStart") or {}).get("trials")
    if started and isinstance(recorded, int):
        trials = trials[:recorded]
        while len(trials) < recorded:  # earlier trials that are gone keep their place
            trials.append(placeholder(len(trials)))
    summary = f"{len(trials)} earlier trials"
    parts = [f"{given} from spec.warmStart.trials"] if given else []
    parts += [f"{r['trials']} from {r['name']}" for r in reports if r["found"]]
    if parts:
        summary += f" ({', '.join(parts)})"
    message = "; ".join([summary, *problems])
    return WarmStartPlan(
        trials=trials,
        status={"trials": len(trials), "fromStudies": reports},
        condition=(bool(trials), reason, message),
        warning=message if problems else None,
    )
