"""Several objectives: the Pareto front, the selection rule (promote.select), NSGA-II/TPE
suggestions rebuilt from trial records, and the study's status on crafted trial sets."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest
from kubeforge.api.tuningstudy import Bound, TuningStudySpec, TuningStudyStatus
from kubeforge.tuningstudy import build as tb
from kubeforge.tuningstudy.search import SearchState, TrialRecord
from kubeforge.tuningstudy.selection import Rule, dominates, pareto_front, select
from kubeforge.tuningstudy.status import decide

NOW = "2030-01-01T00:00:00Z"
MAX_MIN = ["maximize", "minimize"]


# --- the front -------------------------------------------------------------------------------


def test_front_of_a_crafted_set() -> None:
    # (accuracy: maximize, latency: minimize)
    points = {
        0: [0.90, 1.0],  # front
        1: [0.95, 2.0],  # front
        2: [0.90, 1.5],  # dominated by 0
        3: [0.80, 0.5],  # front
        4: [0.95, 2.0],  # equal to 1: neither dominates, both on the front
        5: [0.70, 0.6],  # dominated by 3
        6: [0.96, 5.0],  # front
    }
    assert pareto_front(points, MAX_MIN) == [6, 1, 4, 0, 3]  # best accuracy first
    assert dominates(points[0], points[2], MAX_MIN) and not dominates(points[1], points[4], MAX_MIN)
    assert pareto_front({}, MAX_MIN) == []


def test_front_matches_the_definition_on_random_sets() -> None:
    rng = random.Random(7)
    for dims in (2, 3):
        directions = [rng.choice(["minimize", "maximize"]) for _ in range(dims)]
        points = {n: [rng.randint(0, 9) / 3 for _ in range(dims)] for n in range(200)}
        brute = {
            n
            for n in points
            if not any(dominates(points[m], points[n], directions) for m in points if m != n)
        }
        front = pareto_front(points, directions)
        assert set(front) == brute and len(front) == len(brute)
        for a, b in itertools.combinations(front, 2):
            assert not dominates(points[a], points[b], directions)


# --- the selection rule ----------------------------------------------------------------------


def test_select_best_within_bounds() -> None:
    cands = {
        0: (0.97, {"val_accuracy": 0.97, "onnx_latency_ms": 0.9}),
        1: (0.95, {"val_accuracy": 0.95, "onnx_latency_ms": 0.4}),
        2: (0.95, {"val_accuracy": 0.95, "onnx_latency_ms": 0.3}),  # tie: lower number wins
        3: (0.99, {"val_accuracy": 0.99}),  # lacks the bounded metric: not selected
        4: (None, {"onnx_latency_ms": 0.1}),  # lacks the selected metric
    }
    bounded = Rule("val_accuracy", "maximize", {"onnx_latency_ms": Bound(max=0.5)})
    assert select(cands, bounded) == 1
    assert select(cands, Rule("val_accuracy", "maximize", {})) == 3
    two = {"onnx_latency_ms": Bound(min=0.35, max=0.5)}
    assert select(cands, Rule("val_accuracy", "minimize", two)) == 1
    assert select(cands, Rule("val_accuracy", "maximize", {"x": Bound(max=1)})) is None


# --- a study --------------------------------------------------------------------------------


def acc(p: dict[str, Any]) -> float:
    """A digits-like trade-off: wider is more accurate and slower."""
    return round(0.80 + 0.18 * (1 - 1 / p["width"]) - 0.02 * abs(p["x"]), 6)


def lat(p: dict[str, Any]) -> float:
    return round(0.05 * p["width"] + 0.01 * abs(p["x"]), 6)


def raw_spec(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "objectives": [
            {"metric": "val_accuracy", "direction": "maximize"},
            {"metric": "onnx_latency_ms", "direction": "minimize"},
        ],
        "searchSpace": {
            "width": {"type": "int", "low": 1, "high": 16},
            "x": {"type": "float", "low": -1, "high": 1},
        },
        "algorithm": {"name": "nsga2", "seed": 3, "settings": {"population_size": 6}},
        "maxTrials": 24,
        "parallelism": 3,
        "trialTemplate": {"spec": {"command": ["train"]}},
    }
    raw.update(over)
    return raw


def run_study(raw: dict[str, Any], order_seed: int = 0) -> tuple[dict[str, Any], dict, list]:
    """Play the study to its end: returns (status, trials by name, last promote body)."""
    study: dict[str, Any] = {
        "metadata": {"name": "s", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": raw,
        "status": {},
    }
    spec = TuningStudySpec.model_validate(raw)
    trials: dict[str, dict[str, Any]] = {}
    rng = random.Random(order_seed)
    promotes = []
    for _ in range(500):
        d = decide(study, spec, list(trials.values()), NOW)
        study["status"] = d.status
        for m in d.create:
            trials[m["metadata"]["name"]] = json.loads(json.dumps(m))
        if d.promote:
            promotes.append(d.promote)
        TuningStudyStatus.model_validate(d.status)  # the CRD's status shape
        if d.status["phase"] != "Running":
            return d.status, trials, promotes
        running = [t for t in trials.values() if tb.trial_state(t) == "running"]
        t = rng.choice(running)
        p = json.loads(t["metadata"]["annotations"][tb.PARAMS])
        name = t["metadata"]["name"]
        t["status"] = {
            "phase": "Succeeded",
            "metrics": {"val_accuracy": acc(p), "onnx_latency_ms": lat(p), "val_loss": 0.1},
            "artifacts": {"model": f"s3://b/{name}/model.onnx"},
        }
    raise AssertionError("the study did not finish")


@pytest.mark.parametrize("algo", ["nsga2", "tpe", "random"])
def test_two_objective_study_front_is_non_dominated(algo: str) -> None:
    settings = {"population_size": 6} if algo == "nsga2" else {}
    status, trials, promotes = run_study(
        raw_spec(algorithm={"name": algo, "seed": 3, "settings": settings})
    )
    assert status["phase"] == "Succeeded" and status["trials"]["succeeded"] == 24
    points = {}
    for t in trials.values():
        m = t["status"]["metrics"]
        points[tb.trial_number(t)] = [m["val_accuracy"], m["onnx_latency_ms"]]
    front = status["paretoFront"]
    assert [p["number"] for p in front] == pareto_front(points, MAX_MIN)
    assert status["paretoFrontSize"] == len(front) >= 2
    for p in front:
        assert p["values"] == dict(
            zip(["val_accuracy", "onnx_latency_ms"], points[p["number"]], strict=True)
        )
        assert p["name"] == tb.trial_name("s", p["number"]) and set(p["params"]) == {"width", "x"}
    # no select: the first objective's best on the front
    best = status["bestTrial"]
    assert best["number"] == front[0]["number"]
    assert best["value"] == max(v[0] for v in points.values())
    assert best["values"] == front[0]["values"]
    assert promotes == []  # no promote.modelDeployment
    # the trials carry both metrics for kubeforge-report
    any_trial = next(iter(trials.values()))
    assert (
        any_trial["metadata"]["annotations"][tb.OBJECTIVE_METRIC] == "val_accuracy,onnx_latency_ms"
    )


def test_promote_select_picks_the_point_within_the_latency_bound() -> None:
    raw = raw_spec(
        promote={
            "modelDeployment": "digits",
            "select": {"maximize": "val_accuracy", "subjectTo": {"onnx_latency_ms": {"max": 0.3}}},
        }
    )
    status, trials, promotes = run_study(raw)
    feasible = {
        tb.trial_number(t): t["status"]["metrics"]
        for t in trials.values()
        if t["status"]["metrics"]["onnx_latency_ms"] <= 0.3
    }
    assert feasible, "the crafted study has feasible points"
    want = max(sorted(feasible), key=lambda n: feasible[n]["val_accuracy"])
    best = status["bestTrial"]
    assert best["number"] == want and best["metrics"]["onnx_latency_ms"] <= 0.3
    assert best["value"] == feasible[want]["val_accuracy"]
    unbounded = max(t["status"]["metrics"]["val_accuracy"] for t in trials.values())
    assert unbounded > best["value"]  # the bound changed the choice
    assert promotes[-1]["spec"]["model"] == {"uri": f"s3://b/{best['name']}/model.onnx"}
    assert promotes[-1]["metadata"]["name"] == "digits"


def test_constraints_with_one_objective() -> None:
    raw = raw_spec(
        objective={"metric": "val_accuracy", "direction": "maximize"},
        algorithm={"name": "tpe", "seed": 1},
        promote={
            "select": {"maximize": "val_accuracy", "subjectTo": {"onnx_latency_ms": {"max": 0.2}}}
        },
    )
    del raw["objectives"]
    status, trials, _ = run_study(raw)
    ok = [
        t["status"]["metrics"]
        for t in trials.values()
        if t["status"]["metrics"]["onnx_latency_ms"] <= 0.2
    ]
    assert status["bestTrial"]["value"] == max(m["val_accuracy"] for m in ok)
    assert status["bestTrial"]["metrics"]["onnx_latency_ms"] <= 0.2
    assert "paretoFront" not in status
    # a bound no trial keeps: the study fails saying so, and promotes nothing
    raw["promote"] = {
        "modelDeployment": "d",
        "select": {"maximize": "val_accuracy", "subjectTo": {"onnx_latency_ms": {"max": 0.001}}},
    }
    status, _, promotes = run_study(raw)
    assert (
        status["phase"] == "Failed" and "none keeps promote.select.subjectTo" in status["message"]
    )
    assert promotes == [] and "bestTrial" not in status


def test_target_is_judged_within_the_bounds() -> None:
    raw = raw_spec(
        objective={"metric": "val_accuracy", "direction": "maximize", "target": 0.9},
        algorithm={"name": "random", "seed": 1},
        promote={
            "select": {"maximize": "val_accuracy", "subjectTo": {"onnx_latency_ms": {"max": 0.001}}}
        },
        maxTrials=10,
    )
    del raw["objectives"]
    status, trials, _ = run_study(raw)
    assert any(t["status"]["metrics"]["val_accuracy"] >= 0.9 for t in trials.values())
    assert status["trials"]["total"] == 10  # never "reached": no trial keeps the bound


@pytest.mark.parametrize("algo", ["nsga2", "tpe"])
def test_multi_objective_rebuilt_search_equals_a_long_lived_study(algo: str) -> None:
    """Suggestions from a study rebuilt from the records at every step equal those of one
    long-lived Optuna study told each result (NSGA-II's generations survive the rebuild)."""
    import optuna
    from kubeforge.tuningstudy import search as S

    settings = {"population_size": 4} if algo == "nsga2" else {}
    spec = TuningStudySpec.model_validate(
        raw_spec(algorithm={"name": algo, "seed": 5, "settings": settings})
    )
    n_trials = 14
    study = optuna.create_study(study_name="ns/s", directions=["maximize", "minimize"])
    long_lived = []
    for n in range(n_trials):
        study.sampler = S.build_sampler(spec, n, "ns/s")
        t = study.ask(fixed_distributions=S.distributions(spec))
        long_lived.append(dict(t.params))
        study.tell(t, [acc(t.params), lat(t.params)])

    records: list[TrialRecord] = []
    rebuilt = []
    for _ in range(n_trials):
        s = SearchState(spec, records, "ns/s").suggest()
        rebuilt.append(s.params)
        records.append(
            TrialRecord(
                number=s.number,
                params=s.params,
                state="complete",
                finals={"val_accuracy": acc(s.params), "onnx_latency_ms": lat(s.params)},
                system_attrs=s.system_attrs,
                study_system_attrs=s.study_system_attrs,
            )
        )
    assert rebuilt == long_lived
    assert len({json.dumps(p, sort_keys=True) for p in rebuilt}) == n_trials


def test_a_deleted_best_stays_only_while_it_keeps_the_rule() -> None:
    """bestTrial whose TrainingJob was garbage-collected stays until a better trial appears,
    judged by promote.select (its metric and its bounds)."""
    from kubeforge.tuningstudy.choice import best_trial

    raw = raw_spec(
        objective={"metric": "val_accuracy", "direction": "maximize"},
        algorithm={"name": "random", "seed": 0},
        promote={
            "select": {"maximize": "val_accuracy", "subjectTo": {"onnx_latency_ms": {"max": 0.5}}}
        },
    )
    del raw["objectives"]
    spec = TuningStudySpec.model_validate(raw)
    record = TrialRecord(number=3, params={"width": 2, "x": 0.0}, state="complete", final=0.9)
    job = {"status": {"metrics": {"val_accuracy": 0.9, "onnx_latency_ms": 0.1}}}
    gone_ok = {
        "name": "s-trial-1",
        "number": 1,
        "value": 0.95,
        "metrics": {"val_accuracy": 0.95, "onnx_latency_ms": 0.2},
    }
    gone_slow = {**gone_ok, "metrics": {"val_accuracy": 0.95, "onnx_latency_ms": 0.9}}
    assert best_trial("s", [record], {3: job}, spec, gone_ok)["number"] == 1
    assert best_trial("s", [record], {3: job}, spec, gone_slow)["number"] == 3
