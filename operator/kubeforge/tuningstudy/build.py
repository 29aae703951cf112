"""TuningStudy → trial TrainingJobs (pure), and back: a trial TrainingJob → its trial record.

A trial is a child TrainingJob named `<study>-trial-<n>`. Everything the search needs is recorded
on it, never in the study object (whose status stays small however many trials run):

- label `kubeforge.io/tuningstudy` (the study) and `kubeforge.io/trial-number` (n);
- annotation `kubeforge.io/trial-params`: the suggested parameters (JSON), also merged into
  `spec.hyperparameters` (so `HP_*` and `$(HP_*)` work);
- annotation `kubeforge.io/trial-system-attrs`: Optuna's system attributes of the trial (grid's
  `grid_id`, CMA-ES's optimizer state, hyperband's completed rungs);
- annotation `kubeforge.io/study-system-attrs`: Optuna's study attributes right after the
  suggestion (qmc's sample counter), only when there are any;
- annotation `kubeforge.io/trial-reports`: the intermediate values of the objective metric seen
  so far, `[[step, value], ...]` (the operator appends as the trial's progress moves);
- annotation `kubeforge.io/objective-metric`: the study's objective metric, which the TrainingJob
  builder hands to `kubeforge-report` (`--metric`) when the template collects metrics from
  stdout or a file, so only lines carrying the objective are intermediate reports;
- annotation `kubeforge.io/stop`: the study's request that the trial stop (`pruned`, or
  `study-succeeded` / `study-failed`); it survives restarts, and the progress endpoint answers it
  to the trial's trainer (nobody writes on the trial's pods).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

from kubeforge.api._tuning_objective import Objective
from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.trainingjob.build import OBJECTIVE_METRIC_ANNOTATION
from kubeforge.tuningstudy._records import TrialRecord

JSON = dict[str, Any]

API_VERSION = "kubeforge.io/v1alpha1"
STUDY_KIND = "TuningStudy"
TRIAL_KIND = "TrainingJob"

STUDY_LABEL = "kubeforge.io/tuningstudy"
NUMBER_LABEL = "kubeforge.io/trial-number"
PARAMS = "kubeforge.io/trial-params"
SYSTEM_ATTRS = "kubeforge.io/trial-system-attrs"
STUDY_SYSTEM_ATTRS = "kubeforge.io/study-system-attrs"
REPORTS = "kubeforge.io/trial-reports"
OBJECTIVE_METRIC = OBJECTIVE_METRIC_ANNOTATION
"""The objective metric of the study (read by the TrainingJob builder for kubeforge-report)."""
STOP = "kubeforge.io/stop"
"""On a trial TrainingJob (the record) and on its pods (the request the trainer obeys)."""

PRUNED = "pruned"
STUDY_SUCCEEDED = "study-succeeded"
STUDY_FAILED = "study-failed"

TRIAL_NAME_LIMIT = 52
"""Trial names leave room for the Job's pods (`<name>-<index>-<5 chars>`, hostname ≤ 63)."""
MAX_REPORTS = 1000
"""Intermediate values kept per trial (older ones are thinned, the latest always kept)."""
RETAIN_FALSE_TTL = 60
"""ttlSecondsAfterFinished of a trial's Job when `retain: false` and the template sets none:
long enough for the trial's final status to be recorded, short enough to let pods go."""


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def trial_name(study: str, number: int) -> str:
    """`<study>-trial-<n>`; a long study name is truncated with a hash (deterministic)."""
    suffix = f"-trial-{number}"
    name = study + suffix
    if len(name) <= TRIAL_NAME_LIMIT:
        return name
    keep = TRIAL_NAME_LIMIT - len(suffix) - 9
    return f"{study[:keep].rstrip('-.')}-{_short_hash(study)}{suffix}"


def study_label_value(study: str) -> str:
    """The study's name as a label value (≤ 63 characters; hash-truncated when longer)."""
    if len(study) <= 63:
        return study
    return f"{study[:54].rstrip('-.')}-{_short_hash(study)}"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def owner_reference(study: JSON) -> JSON:
    meta = study["metadata"]
    return {
        "apiVersion": study.get("apiVersion", API_VERSION),
        "kind": STUDY_KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def trial_manifest(
    study: JSON,
    spec: TuningStudySpec,
    number: int,
    params: dict[str, Any],
    system_attrs: dict[str, Any] | None = None,
    study_system_attrs: dict[str, Any] | None = None,
) -> JSON:
    """The child TrainingJob of trial `number` (suggestion `params` merged into hyperparameters)."""
    meta = study["metadata"]
    raw_template = ((study.get("spec") or {}).get("trialTemplate") or {}).get("spec")
    tspec: JSON = (
        copy.deepcopy(raw_template)
        if isinstance(raw_template, dict)
        else spec.trial_template.spec.wire()
    )
    targeted = {k: p.target for k, p in spec.search_space.items() if p.target is not None}
    tspec["hyperparameters"] = {
        **(tspec.get("hyperparameters") or {}),
        **{k: v for k, v in params.items() if k not in targeted},
    }
    for name, target in targeted.items():
        if name in params:
            set_template_field(tspec, target, params[name])
    if not spec.trial_template.retain:
        rp = dict(tspec.get("runPolicy") or {})
        if rp.get("ttlSecondsAfterFinished") is None:
            rp["ttlSecondsAfterFinished"] = RETAIN_FALSE_TTL
        tspec["runPolicy"] = rp
    annotations = {
        PARAMS: _dumps(params),
        SYSTEM_ATTRS: _dumps(system_attrs or {}),
        OBJECTIVE_METRIC: ",".join(metric for metric, _ in spec.objective_list),
    }
    if study_system_attrs:
        annotations[STUDY_SYSTEM_ATTRS] = _dumps(study_system_attrs)
    return {
        "apiVersion": API_VERSION,
        "kind": TRIAL_KIND,
        "metadata": {
            "name": trial_name(meta["name"], number),
            "namespace": meta.get("namespace"),
            "labels": {
                STUDY_LABEL: study_label_value(meta["name"]),
                NUMBER_LABEL: str(number),
                "app.kubernetes.io/managed-by": "kubeforge",
            },
            "annotations": annotations,
            "ownerReferences": [owner_reference(study)],
        },
        "spec": tspec,
    }


def set_template_field(tspec: JSON, target: str, value: Any) -> None:
    """Model selection: write a suggestion into the trial's TrainingJob spec at `target` (one of
    TEMPLATE_TARGETS); the quantize mode `none` removes `output.onnx.quantize`."""
    if target == "output.onnx.quantize.mode":
        onnx = tspec.setdefault("output", {}).setdefault("onnx", {})
        if value == "none":
            onnx.pop("quantize", None)
        else:
            quantize = dict(onnx.get("quantize") or {})
            quantize["mode"] = value
            if value != "static-int8":
                quantize.pop("calibration", None)  # calibration applies to static-int8 only
            onnx["quantize"] = quantize
        return
    *parents, leaf = target.split(".")
    node = tspec
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def promote_manifest(study: JSON, deployment: str, model_uri: str) -> JSON:
    """Server-side apply body setting only `spec.model` of the ModelDeployment `deployment`
    (`model_uri`: the chosen trial's model.onnx, or its model.int8.onnx when the int8 variant
    was chosen: a uri names the file it serves)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": deployment, "namespace": study["metadata"].get("namespace")},
        "spec": {"model": {"uri": model_uri}},
    }


# --- trial TrainingJob → record --------------------------------------------------------------


def _loads(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def trial_number(obj: JSON) -> int | None:
    """The trial number from the label (None: not a trial)."""
    raw = ((obj.get("metadata") or {}).get("labels") or {}).get(NUMBER_LABEL)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _step_of(progress: JSON) -> int | None:
    step = progress.get("step")
    if step is None:
        step = progress.get("epoch")
    try:
        return int(step) if step is not None else None
    except (TypeError, ValueError):
        return None


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def recorded_reports(obj: JSON) -> list[tuple[int, float]]:
    """The reports recorded in the annotation (sorted by step)."""
    raw = _loads(((obj.get("metadata") or {}).get("annotations") or {}).get(REPORTS), [])
    out: dict[int, float] = {}
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, list) and len(item) == 2:
                v = _num(item[1])
                if v is not None and isinstance(item[0], int):
                    out[item[0]] = v
    return sorted(out.items())


def observed_reports(obj: JSON, metric: str) -> list[tuple[int, float]]:
    """The recorded reports plus the trial's latest progress (when it carries the metric)."""
    reports = dict(recorded_reports(obj))
    progress = (obj.get("status") or {}).get("progress") or {}
    value = _num((progress.get("metrics") or {}).get(metric))
    step = _step_of(progress)
    if value is not None and step is not None:
        reports[step] = value
    return sorted(reports.items())


def thin(reports: list[tuple[int, float]], limit: int = MAX_REPORTS) -> list[tuple[int, float]]:
    """At most `limit` reports: every other old one dropped, the latest half kept."""
    while len(reports) > limit:
        half = len(reports) // 2
        reports = reports[:half:2] + reports[half:]
    return reports


def reports_annotation(reports: list[tuple[int, float]]) -> str:
    return _dumps([[s, v] for s, v in thin(reports)])


def stop_reason(obj: JSON) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(STOP)


def trial_state(obj: JSON) -> str:
    """running | complete | pruned | failed, from the TrainingJob's phase and our stop record."""
    phase = (obj.get("status") or {}).get("phase")
    if phase == "Succeeded":
        return "complete"
    if phase == "Failed":
        return "pruned" if stop_reason(obj) else "failed"
    return "running"


INT8_PREFIX = "int8_"


def quantize_parameter(spec: TuningStudySpec) -> str | None:
    """The search-space entry that targets output.onnx.quantize.mode, if any."""
    for name, p in spec.search_space.items():
        if p.target == "output.onnx.quantize.mode":
            return name
    return None


def serves_int8(params: dict[str, Any], quantize_param: str | None) -> bool:
    """Whether a trial's searched quantize mode makes its int8 model the one it stands for."""
    return quantize_param is not None and params.get(quantize_param) not in (None, "none")


def int8_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A trial's metrics as its int8 model's: `int8_<m>` stands in for `<m>` wherever the
    trainer measured it (accuracy, loss, onnx_latency_ms, onnx_bytes, ...); metrics it has no
    int8 figure for (training time, say) are the trial's own."""
    out = {k: v for k, v in metrics.items() if not k.startswith(INT8_PREFIX)}
    for k, v in metrics.items():
        if k.startswith(INT8_PREFIX) and not k.endswith("_delta"):
            out[k[len(INT8_PREFIX):]] = v
    return out


def trial_params(obj: JSON) -> dict[str, Any]:
    """The suggested parameters recorded on a trial ({} when absent or unreadable)."""
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    params = _loads(ann.get(PARAMS), None)
    return params if isinstance(params, dict) else {}


def trial_record(
    obj: JSON, objective: Objective, metrics: Sequence[str] = (), quantize_param: str | None = None
) -> TrialRecord | None:
    """The search's view of a trial TrainingJob (None: not a trial). `metrics`: the objectives
    of a multi-objective study, whose final values are kept in `finals`. `quantize_param`: the
    search entry targeting the quantize mode; a trial that chose int8 is valued by its int8
    model's metrics (what it would serve), so the search over the mode means something."""
    number = trial_number(obj)
    if number is None:
        return None
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    params = trial_params(obj)
    metrics_of = (obj.get("status") or {}).get("metrics") or {}
    if serves_int8(params, quantize_param):
        metrics_of = int8_metrics(metrics_of)
    state = trial_state(obj)
    final = _num(metrics_of.get(objective.metric)) if state == "complete" else None
    return TrialRecord(
        number=number,
        params=params,
        state=state,  # type: ignore[arg-type]
        reports=observed_reports(obj, objective.metric),
        final=final,
        finals={
            m: v
            for m in metrics
            if state == "complete" and (v := _num(metrics_of.get(m))) is not None
        },
        system_attrs=_loads(ann.get(SYSTEM_ATTRS), {}) or {},
        study_system_attrs=_loads(ann.get(STUDY_SYSTEM_ATTRS), {}) or {},
    )
