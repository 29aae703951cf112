"""warmStart.fromStudies: the completed trials of earlier studies in the namespace enter the
rebuilt study as completed trials (through the reconcile decision, as the operator runs it)."""

from __future__ import annotations

import json
import random
from typing import Any

from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.tuningstudy import build as tb
from kubeforge.tuningstudy.search import NSGA2_GENERATION
from kubeforge.tuningstudy.status import Decision, decide
from kubeforge.tuningstudy.warmstart import SourceStudy

NOW = "2030-01-01T00:00:00Z"
CREATED = "2029-12-31T12:00:00Z"
"""When the warm-started study was created: earlier trials completed before it."""


def f(p: dict[str, Any]) -> float:
    """The benchmark function: its minimum 0 at x = 1, y = -2."""
    return float((p["x"] - 1) ** 2 + (p["y"] + 2) ** 2)


def space(low: float = -5, high: float = 5) -> dict[str, Any]:
    return {
        "x": {"type": "float", "low": low, "high": high},
        "y": {"type": "float", "low": low, "high": high},
    }


def study(name: str, seed: int, warm: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        **({} if "objectives" in over else {"objective": {"metric": "loss"}}),
        "searchSpace": space(),
        "algorithm": {"name": "tpe", "seed": seed},
        "maxTrials": 20,
        "parallelism": 1,
        "trialTemplate": {"spec": {"command": ["train"]}},
        **over,
    }
    if warm is not None:
        raw["warmStart"] = warm
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": CREATED,
        },
        "spec": raw,
        "status": {},
    }


def trial(
    source: str,
    number: int,
    params: dict[str, Any],
    metrics: dict[str, float],
    done: str = "2029-12-31T00:00:00Z",
    uid: str | None = None,
) -> dict[str, Any]:
    """A finished trial TrainingJob of study `source`."""
    return {
        "metadata": {
            "name": tb.trial_name(source, number),
            "namespace": "ns",
            "labels": {tb.STUDY_LABEL: source, tb.NUMBER_LABEL: str(number)},
            "annotations": {tb.PARAMS: json.dumps(params)},
            "ownerReferences": [
                {"kind": "TuningStudy", "name": source, "uid": uid or f"uid-{source}",
                 "controller": True}
            ],
        },
        "status": {"phase": "Succeeded", "metrics": metrics, "completionTime": done},
    }


def earlier_study(n: int = 30, low: float = -5, high: float = 5) -> SourceStudy:
    rng = random.Random(42)
    trials = []
    for i in range(n):
        p = {"x": rng.uniform(low, high), "y": rng.uniform(low, high)}
        trials.append(trial("old", i, p, {"loss": f(p)}))
    return SourceStudy("old", {"metadata": {"name": "old", "uid": "uid-old"}}, trials)


def first(obj: dict[str, Any], sources: tuple[SourceStudy, ...] = ()) -> Decision:
    spec = TuningStudySpec.model_validate(obj["spec"])
    return decide(obj, spec, [], NOW, sources)


def params_of(d: Decision) -> dict[str, Any]:
    return dict(json.loads(d.create[0]["metadata"]["annotations"][tb.PARAMS]))


def condition(d: Decision) -> dict[str, Any]:
    return next(c for c in d.status["conditions"] if c["type"] == "WarmStarted")


def test_first_suggestion_is_informed_by_the_earlier_study_and_better() -> None:
    source = (earlier_study(),)
    cold = [f(params_of(first(study("new", seed)))) for seed in range(10)]
    warm = [
        f(params_of(first(study("new", seed, {"fromStudies": ["old"]}), source)))
        for seed in range(10)
    ]
    assert all(c != w for c, w in zip(cold, warm, strict=True))  # differs, seed by seed
    assert sum(warm) / len(warm) < 0.5 * sum(cold) / len(cold)  # better on the function
    d = first(study("new", 0, {"fromStudies": ["old"]}), source)
    assert d.status["warmStart"] == {
        "trials": 30,
        "fromStudies": [{"name": "old", "trials": 30, "skipped": 0, "found": True}],
    }
    c = condition(d)
    assert (c["status"], c["reason"]) == ("True", "EarlierTrialsLoaded")
    assert c["message"] == "30 earlier trials (30 from old)"
    assert d.events == []


def test_same_as_the_same_trials_given_in_the_spec() -> None:
    source = earlier_study(12)
    given = [
        {"params": json.loads(t["metadata"]["annotations"][tb.PARAMS]),
         "values": t["status"]["metrics"]}
        for t in source.trials
    ]
    from_spec = first(study("new", 5, {"trials": given}))
    from_study = first(study("new", 5, {"fromStudies": ["old"]}), (source,))
    assert params_of(from_spec) == params_of(from_study)


def test_only_trials_completed_before_the_study_and_of_that_study() -> None:
    source = earlier_study(5)
    p = {"x": 1.0, "y": -2.0}
    source.trials.append(trial("old", 5, p, {"loss": 0.0}, done="2029-12-31T12:00:01Z"))  # later
    source.trials.append(trial("old", 6, p, {"loss": 0.0}, uid="uid-an-older-old"))  # leftover
    running = trial("old", 7, p, {})
    running["status"] = {"phase": "Running"}
    source.trials.append(running)
    d = first(study("new", 0, {"fromStudies": ["old"]}), (source,))
    assert d.status["warmStart"]["trials"] == 5


def test_params_outside_the_search_space_are_skipped_with_a_condition_and_an_event() -> None:
    source = earlier_study(20, low=-10, high=10)  # a wider space than the new study's
    for t in source.trials:  # a parameter the new study does not search
        p = json.loads(t["metadata"]["annotations"][tb.PARAMS])
        t["metadata"]["annotations"][tb.PARAMS] = json.dumps({**p, "z": 3})
    inside = [
        t for t in source.trials
        if all(-5 <= v <= 5 for k, v in json.loads(t["metadata"]["annotations"][tb.PARAMS]).items()
               if k != "z")
    ]
    lacking = trial("old", 20, {"x": 0.0}, {"loss": 1.0})
    no_value = trial("old", 21, {"x": 0.0, "y": 0.0}, {"other": 1.0})
    source.trials.extend([lacking, no_value])
    obj = study("new", 0, {"fromStudies": ["old"]})
    d = first(obj, (source,))
    skipped = 22 - len(inside)
    assert 0 < len(inside) < 20
    assert d.status["warmStart"]["fromStudies"] == [
        {"name": "old", "trials": len(inside), "skipped": skipped, "found": True}
    ]
    c = condition(d)
    assert (c["status"], c["reason"]) == ("True", "EarlierTrialsSkipped")
    assert f"spec.warmStart.fromStudies[0] (old): skipped {skipped}: trial " in c["message"]
    assert "is outside searchSpace (x=" in c["message"] or "is outside searchSpace (y=" in c[
        "message"]
    assert "parameters not in searchSpace ignored: z" in c["message"]
    assert d.create  # the study runs
    assert [(k, r) for k, r, _ in d.events] == [("Warning", "EarlierTrialsSkipped")]
    # the next reconcile (same message) posts no second Event
    obj["status"] = d.status
    again = decide(obj, TuningStudySpec.model_validate(obj["spec"]),
                   [json.loads(json.dumps(m)) for m in d.create], NOW, (source,))
    assert again.events == []
    # the lacking and valueless trials are named when they are among the first shown
    only_bad = SourceStudy("old", source.study, [lacking, no_value])
    msg = condition(first(study("new", 0, {"fromStudies": ["old"]}), (only_bad,)))["message"]
    assert "trial 20 lacks y" in msg and "trial 21 has no loss" in msg


def test_a_missing_study_is_a_condition_naming_the_field_not_a_crash() -> None:
    d = first(
        study("new", 0, {"fromStudies": ["old", "nope"]}),
        (earlier_study(4), SourceStudy("nope", None, [])),
    )
    c = condition(d)
    assert (c["status"], c["reason"]) == ("True", "SourceStudyNotFound")
    assert "spec.warmStart.fromStudies[1]: TuningStudy 'nope' not found in namespace 'ns'" in (
        c["message"]
    )
    assert d.status["warmStart"]["fromStudies"][1] == {
        "name": "nope", "trials": 0, "skipped": 0, "found": False
    }
    assert d.create and d.status["phase"] == "Running"
    assert [r for _, r, _ in d.events] == ["SourceStudyNotFound"]
    alone = condition(first(study("new", 0, {"fromStudies": ["nope"]}), ()))
    assert (alone["status"], alone["reason"]) == ("False", "SourceStudyNotFound")
    itself = condition(first(study("new", 0, {"fromStudies": ["new"]}), ()))
    assert "fromStudies[0]: a study cannot warm-start from itself" in itself["message"]


def test_earlier_trials_that_disappear_keep_their_place() -> None:
    """Once trials exist the count is recorded; the source's deletion leaves placeholders, so
    the study's own trials keep their Optuna numbers (and the study goes on)."""
    obj = study("new", 0, {"fromStudies": ["old"]})
    spec = TuningStudySpec.model_validate(obj["spec"])
    d = decide(obj, spec, [], NOW, (earlier_study(6),))
    obj["status"] = d.status
    trials = [json.loads(json.dumps(m)) for m in d.create]
    trials[0]["status"] = {"phase": "Succeeded", "metrics": {"loss": 1.0}}
    gone = decide(obj, spec, trials, NOW, (SourceStudy("old", None, []),))
    assert gone.status["warmStart"]["trials"] == 6
    assert [m["metadata"]["name"] for m in gone.create] == ["new-trial-1"]
    assert condition(gone)["reason"] == "SourceStudyNotFound"


def test_nsga2_breeds_from_the_earlier_trials() -> None:
    """NSGA-II keeps trials without a generation out of every population; earlier trials are
    its generation 0, so with a full population the first suggestion is bred (generation 1)."""
    objectives = [{"metric": "loss"}, {"metric": "size"}]
    rng = random.Random(1)
    trials = []
    for i in range(8):
        p = {"x": rng.uniform(-5, 5), "y": rng.uniform(-5, 5)}
        trials.append(trial("old", i, p, {"loss": f(p), "size": abs(p["x"])}))
    source = SourceStudy("old", {"metadata": {"name": "old", "uid": "uid-old"}}, trials)
    over = {"objectives": objectives,
            "algorithm": {"name": "nsga2", "seed": 0, "settings": {"population_size": 4}}}
    cold = first(study("new", 0, **over))
    warm = first(study("new", 0, {"fromStudies": ["old"]}, **over), (source,))

    def generation(d: Decision) -> int:
        attrs = json.loads(d.create[0]["metadata"]["annotations"][tb.SYSTEM_ATTRS])
        return int(attrs[NSGA2_GENERATION])

    assert generation(cold) == 0 and generation(warm) == 1


def test_from_studies_names_are_checked() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"fromStudies\[1\]: 'Bad_Name' is not a TuningStudy"):
        TuningStudySpec.model_validate(study("n", 0, {"fromStudies": ["a", "Bad_Name"]})["spec"])
    with pytest.raises(ValidationError, match="fromStudies must name different studies"):
        TuningStudySpec.model_validate(study("n", 0, {"fromStudies": ["a", "a"]})["spec"])
