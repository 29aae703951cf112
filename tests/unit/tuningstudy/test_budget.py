"""budget.maxDuration: no new trials once it has passed; running trials finish; then the study
succeeds with reason MaxDurationReached, and raising the budget continues it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubeforge.api.tuningstudy import TuningStudySpec, duration_seconds
from kubeforge.tuningstudy import build as tb
from kubeforge.tuningstudy.status import decide


def at(minutes: int) -> str:
    return f"2030-01-01T{minutes // 60:02d}:{minutes % 60:02d}:00Z"


def raw(max_duration: str) -> dict[str, Any]:
    return {
        "objective": {"metric": "loss"},
        "searchSpace": {"x": {"type": "float", "low": -1, "high": 1}},
        "algorithm": {"name": "random", "seed": 0},
        "maxTrials": 20,
        "parallelism": 2,
        "budget": {"maxDuration": max_duration},
        "trialTemplate": {"spec": {"command": ["train"]}},
    }


class Study:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.obj: dict[str, Any] = {
            "metadata": {"name": "b", "namespace": "ns", "uid": "u", "generation": 1},
            "spec": spec,
            "status": {},
        }
        self.trials: dict[str, dict[str, Any]] = {}

    def reconcile(self, now: str) -> dict[str, Any]:
        d = decide(
            self.obj,
            TuningStudySpec.model_validate(self.obj["spec"]),
            list(self.trials.values()),
            now,
        )
        for m in d.create:
            self.trials[m["metadata"]["name"]] = json.loads(json.dumps(m))
        self.obj["status"] = d.status
        return d.status

    def finish_running(self) -> None:
        for name, t in self.trials.items():
            if tb.trial_state(t) == "running":
                t["status"] = {"phase": "Succeeded", "metrics": {"loss": len(name) % 7 / 10}}


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h30m", 5400)])
def test_durations(text: str, seconds: int) -> None:
    assert duration_seconds(text) == seconds


def test_budget_stops_suggesting_and_running_trials_finish() -> None:
    s = Study(raw("30m"))
    st = s.reconcile(at(0))
    assert st["trials"]["total"] == 2 and st["startTime"] == at(0)
    s.finish_running()
    st = s.reconcile(at(10))
    assert st["trials"]["total"] == 4  # within the budget: two more
    st = s.reconcile(at(31))  # past it, two still running: nothing new, they finish
    assert st["phase"] == "Running" and st["trials"]["total"] == 4
    assert "budget.maxDuration reached" in st["message"]
    s.finish_running()
    st = s.reconcile(at(32))
    assert st["phase"] == "Succeeded" and st["trials"]["total"] == 4
    cond = next(c for c in st["conditions"] if c["type"] == "Succeeded")
    assert cond["reason"] == "MaxDurationReached"
    assert st["bestTrial"]["name"].startswith("b-trial-")
    # raising the budget continues the study (startTime stays)
    s.obj["spec"]["budget"]["maxDuration"] = "2h"
    st = s.reconcile(at(40))
    assert st["phase"] == "Running" and st["trials"]["total"] == 6 and st["startTime"] == at(0)


def test_bad_duration_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"maxDuration|max_duration|pattern"):
        TuningStudySpec.model_validate(raw("30 minutes"))
