"""Trial TrainingJob builder and the record read back from it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubeforge.api.trainingjob import TrainingJobSpec
from kubeforge.api.tuningstudy import Objective, TuningStudySpec
from kubeforge.tuningstudy import build as tb

RAW: dict[str, Any] = {
    "objective": {"metric": "val_loss"},
    "searchSpace": {"lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}},
    "trialTemplate": {
        "spec": {
            "command": ["python3", "train.py"],
            "args": ["--lr=$(HP_LR)"],
            "hyperparameters": {"epochs": 3, "lr": 0.5},
            "metricsCollector": {"kind": "StdOut"},
        }
    },
}


def study(name: str = "s", raw: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TuningStudy",
        "metadata": {"name": name, "namespace": "ns", "uid": "u-1", "generation": 1},
        "spec": raw or RAW,
    }


@pytest.mark.parametrize(
    ("name", "n", "want"),
    [("s", 0, "s-trial-0"), ("mnist-lr", 12, "mnist-lr-trial-12")],
)
def test_trial_name(name: str, n: int, want: str) -> None:
    assert tb.trial_name(name, n) == want


def test_long_names_are_hash_truncated_deterministically() -> None:
    long = "a-very-long-study-name-that-goes-on-and-on-" * 3
    a = tb.trial_name(long, 123)
    assert len(a) <= tb.TRIAL_NAME_LIMIT and a.endswith("-trial-123")
    assert a == tb.trial_name(long, 123)
    assert tb.trial_name(long + "x", 123) != a
    assert len(tb.study_label_value("x" * 200)) <= 63


def test_manifest() -> None:
    spec = TuningStudySpec.model_validate(RAW)
    m = tb.trial_manifest(study(), spec, 7, {"lr": 0.01}, {"grid_id": 3}, {"qmc:x": 6})
    meta = m["metadata"]
    assert (m["kind"], meta["name"], meta["namespace"]) == ("TrainingJob", "s-trial-7", "ns")
    assert meta["labels"][tb.STUDY_LABEL] == "s" and meta["labels"][tb.NUMBER_LABEL] == "7"
    assert json.loads(meta["annotations"][tb.PARAMS]) == {"lr": 0.01}
    assert json.loads(meta["annotations"][tb.SYSTEM_ATTRS]) == {"grid_id": 3}
    assert json.loads(meta["annotations"][tb.STUDY_SYSTEM_ATTRS]) == {"qmc:x": 6}
    owner = meta["ownerReferences"][0]
    assert owner == {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TuningStudy",
        "name": "s",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    # the suggestion wins over the template's value; the rest of the template is kept as written
    assert m["spec"]["hyperparameters"] == {"epochs": 3, "lr": 0.01}
    assert m["spec"]["args"] == ["--lr=$(HP_LR)"]
    assert m["spec"]["runPolicy"] == {"ttlSecondsAfterFinished": tb.RETAIN_FALSE_TTL}
    TrainingJobSpec.model_validate(m["spec"])  # a valid TrainingJob spec
    assert RAW["trialTemplate"]["spec"]["hyperparameters"]["lr"] == 0.5  # template untouched


def test_retain_keeps_pods_and_a_template_ttl_wins() -> None:
    raw = json.loads(json.dumps(RAW))
    raw["trialTemplate"]["retain"] = True
    m = tb.trial_manifest(study(raw=raw), TuningStudySpec.model_validate(raw), 0, {"lr": 0.01})
    assert "runPolicy" not in m["spec"]
    raw["trialTemplate"]["retain"] = False
    raw["trialTemplate"]["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 5, "backoffLimit": 0}
    m = tb.trial_manifest(study(raw=raw), TuningStudySpec.model_validate(raw), 0, {"lr": 0.01})
    assert m["spec"]["runPolicy"] == {"ttlSecondsAfterFinished": 5, "backoffLimit": 0}


def tj(phase: str | None = None, stop: str | None = None, **status: Any) -> dict[str, Any]:
    spec = TuningStudySpec.model_validate(RAW)
    m = tb.trial_manifest(study(), spec, 4, {"lr": 0.02}, {"completed_rung_0": 1.5})
    if stop:
        m["metadata"]["annotations"][tb.STOP] = stop
    m["status"] = {**({"phase": phase} if phase else {}), **status}
    return m


@pytest.mark.parametrize(
    ("phase", "stop", "state"),
    [
        (None, None, "running"),
        ("Pending", None, "running"),
        ("Queued", None, "running"),
        ("Running", "pruned", "running"),
        ("Succeeded", None, "complete"),
        ("Succeeded", "study-succeeded", "complete"),
        ("Failed", None, "failed"),
        ("Failed", "pruned", "pruned"),
        ("Failed", "study-succeeded", "pruned"),
    ],
)
def test_trial_state(phase: str | None, stop: str | None, state: str) -> None:
    assert tb.trial_state(tj(phase, stop)) == state


def test_record_round_trip() -> None:
    obj = tj(
        "Succeeded",
        metrics={"val_loss": 0.2, "acc": 0.9},
        progress={"step": 3, "metrics": {"val_loss": 0.25}},
    )
    obj["metadata"]["annotations"][tb.REPORTS] = "[[1,0.5],[2,0.3]]"
    rec = tb.trial_record(obj, Objective(metric="val_loss"))
    assert rec is not None
    assert (rec.number, rec.params, rec.state, rec.final) == (4, {"lr": 0.02}, "complete", 0.2)
    assert rec.reports == [(1, 0.5), (2, 0.3), (3, 0.25)]
    assert rec.system_attrs == {"completed_rung_0": 1.5}
    assert rec.value(Objective(metric="val_loss", strategy="best")) == 0.2
    assert tb.trial_record({"metadata": {"name": "x"}}, Objective(metric="m")) is None


def test_progress_step_falls_back_to_epoch_and_ignores_other_metrics() -> None:
    obj = tj("Running", progress={"epoch": 2, "metrics": {"val_loss": 0.4}})
    assert tb.observed_reports(obj, "val_loss") == [(2, 0.4)]
    obj = tj("Running", progress={"epoch": 2, "metrics": {"acc": 0.4}})
    assert tb.observed_reports(obj, "val_loss") == []


def test_corrupt_annotations_do_not_crash() -> None:
    obj = tj("Running")
    obj["metadata"]["annotations"][tb.REPORTS] = "not json"
    obj["metadata"]["annotations"][tb.PARAMS] = "[1]"
    rec = tb.trial_record(obj, Objective(metric="val_loss"))
    assert rec is not None and rec.reports == [] and rec.params == {}


def test_thin_keeps_the_latest() -> None:
    reports = [(i, float(i)) for i in range(5000)]
    out = tb.thin(reports, 1000)
    assert len(out) <= 1000 and out[-1] == (4999, 4999.0) and out[0] == (0, 0.0)
    assert len(tb.reports_annotation(reports)) < 30_000


def test_promote_manifest_sets_only_the_model() -> None:
    body = tb.promote_manifest(study(), "serve", "s3://b/m/")
    assert body == {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "serve", "namespace": "ns"},
        "spec": {"model": {"uri": "s3://b/m/"}},
    }
