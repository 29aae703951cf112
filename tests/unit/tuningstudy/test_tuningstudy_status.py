"""The reconcile decision, played against an in-memory 'cluster' of trial TrainingJobs."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from kubeforge.api.tuningstudy import TuningStudySpec
from kubeforge.tuningstudy import build as tb
from kubeforge.tuningstudy.status import Decision, decide

NOW = "2030-01-01T00:00:00Z"


def raw_spec(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "objective": {"metric": "loss", "direction": "minimize"},
        "searchSpace": {
            "x": {"type": "float", "low": -5, "high": 5},
            "opt": {"type": "categorical", "choices": ["a", "b"]},
        },
        "algorithm": {"name": "tpe", "seed": 1},
        "maxTrials": 12,
        "parallelism": 3,
        "maxFailedTrials": 2,
        "trialTemplate": {"spec": {"command": ["train"]}},
    }
    raw.update(over)
    return raw


def loss(p: dict[str, Any]) -> float:
    return float((p["x"] - 1) ** 2 + (p["opt"] == "b"))


class Sim:
    """The study object plus its trials, as the API server would hold them."""

    def __init__(self, raw: dict[str, Any], name: str = "s") -> None:
        self.study: dict[str, Any] = {
            "apiVersion": "kubeforge.io/v1alpha1",
            "kind": "TuningStudy",
            "metadata": {"name": name, "namespace": "ns", "uid": "u1", "generation": 1},
            "spec": raw,
            "status": {},
        }
        self.trials: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.last: Decision | None = None

    @property
    def spec(self) -> TuningStudySpec:
        return TuningStudySpec.model_validate(self.study["spec"])

    def reconcile(self) -> Decision:
        d = decide(self.study, self.spec, list(self.trials.values()), NOW)
        for name, value in d.reports.items():
            self.trials[name]["metadata"]["annotations"][tb.REPORTS] = value
        for name, value in d.system_attrs.items():
            self.trials[name]["metadata"]["annotations"][tb.SYSTEM_ATTRS] = value
        for name, reason in d.stop.items():
            self.trials[name]["metadata"]["annotations"][tb.STOP] = reason
        for m in d.create:
            name = m["metadata"]["name"]
            if name not in self.trials:  # create-if-absent
                self.trials[name] = json.loads(json.dumps(m))
                self.created.append(name)
        self.study["status"] = d.status
        self.last = d
        return d

    def running(self) -> list[dict[str, Any]]:
        return [t for t in self.trials.values() if tb.trial_state(t) == "running"]

    @staticmethod
    def params(t: dict[str, Any]) -> dict[str, Any]:
        return dict(json.loads(t["metadata"]["annotations"][tb.PARAMS]))

    def finish(self, t: dict[str, Any], value: float | None = None, *, fail: bool = False) -> None:
        if fail:
            t["status"] = {"phase": "Failed"}
            return
        v = loss(self.params(t)) if value is None else value
        t["status"] = {
            "phase": "Succeeded",
            "metrics": {"loss": v},
            "artifacts": {"model": f"s3://b/{t['metadata']['name']}/model.onnx"},
        }

    def report(self, t: dict[str, Any], step: int, value: float) -> None:
        t.setdefault("status", {})["phase"] = "Running"
        t["status"]["progress"] = {"step": step, "metrics": {"loss": value}}


def run_to_end(sim: Sim, rng: random.Random | None = None, limit: int = 200) -> Decision:
    d = sim.reconcile()
    for _ in range(limit):
        if d.status["phase"] != "Running":
            return d
        run = sim.running()
        assert len(run) <= sim.spec.parallelism
        if run:
            sim.finish(rng.choice(run) if rng else run[0])
        d = sim.reconcile()
    raise AssertionError("study did not finish")


def test_twelve_trials_at_parallelism_three() -> None:
    sim = Sim(raw_spec())
    first = sim.reconcile()
    assert [m["metadata"]["name"] for m in first.create] == ["s-trial-0", "s-trial-1", "s-trial-2"]
    assert first.status["phase"] == "Running" and first.status["trials"]["running"] == 3
    assert sim.reconcile().create == []  # level-based: nothing more while 3 run
    d = run_to_end(sim, random.Random(0))
    assert d.status["phase"] == "Succeeded"
    assert d.status["trials"] == {
        "total": 12,
        "running": 0,
        "succeeded": 12,
        "failed": 0,
        "pruned": 0,
    }
    assert sorted(sim.created) == sorted(f"s-trial-{i}" for i in range(12))
    assert d.status["progress"] == "12/12"
    values = {n: loss(sim.params(t)) for n, t in sim.trials.items()}
    best = min(values, key=lambda n: values[n])
    bt = d.status["bestTrial"]
    assert bt["name"] == best and bt["value"] == values[best]
    assert bt["model"] == f"s3://b/{best}/model.onnx" and bt["metrics"] == {"loss": values[best]}
    reasons = {c["type"]: (c["status"], c["reason"]) for c in d.status["conditions"]}
    assert reasons["Succeeded"] == ("True", "MaxTrialsReached")
    assert reasons["Running"][0] == "False" and d.status["completionTime"]


def test_target_stops_the_study_and_its_running_trials() -> None:
    sim = Sim(raw_spec(objective={"metric": "loss", "target": 0.5}))
    sim.reconcile()
    t0 = sim.trials["s-trial-0"]
    sim.finish(t0, 0.4)
    d = sim.reconcile()
    assert d.status["phase"] == "Succeeded" and d.create == []
    assert d.stop == {"s-trial-1": tb.STUDY_SUCCEEDED, "s-trial-2": tb.STUDY_SUCCEEDED}
    assert d.status["bestTrial"]["name"] == "s-trial-0"
    assert sim.reconcile().stop == {}  # recorded: not asked twice
    for t in sim.running():
        t["status"] = {"phase": "Failed"}  # exit 3 after the stop request
    d = sim.reconcile()
    assert d.status["trials"]["pruned"] == 2 and d.status["trials"]["failed"] == 0
    assert d.status["phase"] == "Succeeded"


def test_max_failed_trials_fails_the_study() -> None:
    sim = Sim(raw_spec())
    sim.reconcile()
    sim.finish(sim.trials["s-trial-0"], fail=True)
    d = sim.reconcile()
    assert d.status["phase"] == "Running" and len(d.create) == 1
    sim.finish(sim.trials["s-trial-1"], fail=True)
    d = sim.reconcile()
    assert d.status["phase"] == "Failed" and d.create == []
    cond = next(c for c in d.status["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "MaxFailedTrialsReached" and "2 trials failed" in cond["message"]
    assert set(d.stop) == {"s-trial-2", "s-trial-3"}


def test_all_trials_failing_below_the_limit_is_no_success() -> None:
    sim = Sim(raw_spec(maxTrials=2, maxFailedTrials=5))
    sim.reconcile()
    for t in list(sim.running()):
        sim.finish(t, fail=True)
    d = sim.reconcile()
    assert d.status["phase"] == "Failed"
    assert (
        next(c for c in d.status["conditions"] if c["type"] == "Failed")["reason"]
        == "NoTrialSucceeded"
    )


def test_raising_max_trials_continues_a_finished_study() -> None:
    sim = Sim(raw_spec(maxTrials=4))
    d = run_to_end(sim)
    assert d.status["phase"] == "Succeeded" and d.status["trials"]["total"] == 4
    sim.study["spec"]["maxTrials"] = 6
    sim.study["metadata"]["generation"] = 2
    d = sim.reconcile()
    assert d.status["phase"] == "Running"
    assert [m["metadata"]["name"] for m in d.create] == ["s-trial-4", "s-trial-5"]
    d = run_to_end(sim)
    assert d.status["phase"] == "Succeeded" and d.status["trials"]["total"] == 6
    assert d.status["observedGeneration"] == 2


def test_lowering_parallelism_takes_effect_as_trials_finish() -> None:
    sim = Sim(raw_spec())
    sim.reconcile()
    sim.study["spec"]["parallelism"] = 1
    sim.finish(sim.trials["s-trial-0"])
    assert sim.reconcile().create == []  # still 2 running
    sim.finish(sim.trials["s-trial-1"])
    sim.finish(sim.trials["s-trial-2"])
    assert len(sim.reconcile().create) == 1


def test_bad_curve_is_pruned_and_counted() -> None:
    raw = raw_spec(
        earlyStopping={"name": "median", "startStep": 2, "settings": {"n_startup_trials": 2}},
        parallelism=1,
        maxTrials=4,
    )
    sim = Sim(raw)
    for _i in range(2):  # two good trials
        sim.reconcile()
        t = sim.running()[0]
        for s in range(5):
            sim.report(t, s, 1.0 - 0.1 * s)
            sim.reconcile()
        sim.finish(t, 0.6)
    sim.reconcile()
    bad = sim.running()[0]
    sim.report(bad, 1, 9.0)
    assert sim.reconcile().stop == {}  # before startStep
    sim.report(bad, 2, 9.0)
    d = sim.reconcile()
    assert d.stop == {bad["metadata"]["name"]: tb.PRUNED}
    assert json.loads(bad["metadata"]["annotations"][tb.REPORTS]) == [[1, 9.0], [2, 9.0]]
    bad["status"]["phase"] = "Failed"  # the trainer exits 3
    d = sim.reconcile()
    assert d.status["trials"]["pruned"] == 1 and d.status["trials"]["failed"] == 0
    assert len(d.create) == 1  # the slot is reused


def test_restarts_and_stale_watch_never_double_or_lose_a_trial() -> None:
    """Every reconcile sees only what the API server holds; sometimes the watch has not caught
    up with the last creation (the trial is missing from the list) or the status write was lost;
    names are deterministic and creation is create-if-absent."""
    rng = random.Random(7)
    sim = Sim(raw_spec(maxTrials=15))
    suggested: dict[str, dict[str, Any]] = {}
    for _ in range(300):
        visible = dict(sim.trials)
        if sim.created and rng.random() < 0.3:
            visible.pop(sim.created[-1], None)  # the watch lags behind our last create
        status_before = dict(sim.study["status"])
        d = decide(sim.study, sim.spec, list(visible.values()), NOW)
        for m in d.create:
            name = m["metadata"]["name"]
            if name not in sim.trials:
                sim.trials[name] = json.loads(json.dumps(m))
                sim.created.append(name)
                suggested[name] = sim.params(m)
        sim.study["status"] = d.status if rng.random() > 0.2 else status_before  # lost write
        if d.status["phase"] != "Running" and not sim.running():
            break
        run = sim.running()
        if run and rng.random() < 0.5:
            sim.finish(rng.choice(run))
    d = sim.reconcile()
    assert d.status["phase"] == "Succeeded"
    assert sorted(sim.trials) == sorted(f"s-trial-{i}" for i in range(15))
    assert all(sim.params(sim.trials[n]) == p for n, p in suggested.items())


def test_garbage_collected_trials_keep_numbering_and_best() -> None:
    sim = Sim(raw_spec(maxTrials=5))
    d = run_to_end(sim)
    best = d.status["bestTrial"]
    sim.study["spec"]["maxTrials"] = 7
    for name in list(sim.trials):
        if name != "s-trial-4":
            del sim.trials[name]
    d = sim.reconcile()
    assert [m["metadata"]["name"] for m in d.create] == ["s-trial-5", "s-trial-6"]
    assert d.status["trials"]["total"] == 7
    if best["name"] != "s-trial-4":
        assert d.status["bestTrial"] == best


def test_promote_once_succeeded() -> None:
    sim = Sim(raw_spec(maxTrials=3, promote={"modelDeployment": "serve"}))
    d = sim.reconcile()
    assert d.promote is None
    d = run_to_end(sim)
    assert d.promote is not None
    assert d.promote["metadata"]["name"] == "serve"
    assert d.promote["spec"] == {"model": {"uri": d.status["bestTrial"]["model"]}}


def test_grid_stops_when_exhausted() -> None:
    raw = raw_spec(
        algorithm={"name": "grid"},
        maxTrials=50,
        searchSpace={
            "x": {"type": "int", "low": 0, "high": 2},
            "opt": {"type": "categorical", "choices": ["a", "b"]},
        },
    )
    sim = Sim(raw)
    d = run_to_end(sim)
    assert d.status["trials"]["total"] == 6 and d.status["progress"] == "6/6"
    assert (
        next(c for c in d.status["conditions"] if c["type"] == "Succeeded")["reason"]
        == "GridExhausted"
    )
    points = {tuple(sorted(sim.params(t).items())) for t in sim.trials.values()}
    assert len(points) == 6


@pytest.mark.parametrize("strategy,want", [("last", 0.5), ("best", 0.2)])
def test_strategy_decides_the_value(strategy: str, want: float) -> None:
    sim = Sim(
        raw_spec(objective={"metric": "loss", "strategy": strategy}, maxTrials=1, parallelism=1)
    )
    sim.reconcile()
    t = sim.trials["s-trial-0"]
    for s, v in enumerate([0.9, 0.2, 0.5]):
        sim.report(t, s, v)
        sim.reconcile()
    t["status"]["phase"] = "Succeeded"  # no final metric: the reports decide
    d = sim.reconcile()
    assert d.status["bestTrial"]["value"] == want


def test_children_of_another_study_uid_are_ignored() -> None:
    sim = Sim(raw_spec())
    sim.reconcile()
    for t in sim.trials.values():
        t["metadata"]["ownerReferences"][0]["uid"] = "old"
    d = sim.reconcile()
    assert d.status["trials"]["running"] == 3  # only its own three new trials
    assert [m["metadata"]["name"] for m in d.create] == ["s-trial-3", "s-trial-4", "s-trial-5"]
