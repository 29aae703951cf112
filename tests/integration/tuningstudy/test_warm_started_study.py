"""warmStart.fromStudies on the real control plane: a second study starts from the first one's
completed trials (read by the operator from its indexes), and a study named that does not exist
is a condition and an Event naming the field, not a crash."""

from __future__ import annotations

from typing import Any

import pytest
from test_tuningstudy import apply, study, succeed_with_loss, wait_phase

pytestmark = pytest.mark.integration


def test_second_study_starts_from_the_first_ones_trials(
    ts_operator: Any, kube: Any, kubectl: Any, namespace: str, trainer_player: Any
) -> None:
    trainer_player("loss", succeed_with_loss)
    apply(kubectl, namespace, study("first", maxTrials=6))
    wait_phase(kube, namespace, "first", "Succeeded", timeout=180)
    apply(
        kubectl,
        namespace,
        study("second", maxTrials=2, parallelism=1,
              warmStart={"fromStudies": ["first", "never-was"]}),
    )
    st = wait_phase(kube, namespace, "second", "Succeeded", timeout=180)["status"]
    assert st["warmStart"] == {
        "trials": 6,
        "fromStudies": [
            {"name": "first", "trials": 6, "skipped": 0, "found": True},
            {"name": "never-was", "trials": 0, "skipped": 0, "found": False},
        ],
    }
    cond = next(c for c in st["conditions"] if c["type"] == "WarmStarted")
    assert (cond["status"], cond["reason"]) == ("True", "SourceStudyNotFound")
    assert "6 earlier trials (6 from first)" in cond["message"]
    assert "spec.warmStart.fromStudies[1]: TuningStudy 'never-was' not found" in cond["message"]
    # the study's own trials keep their numbers; it counts only its own
    assert st["trials"]["total"] == 2
    events = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    warned = [e for e in events if e.get("reason") == "SourceStudyNotFound"]
    assert len(warned) == 1 and warned[0]["involvedObject"]["name"] == "second"
