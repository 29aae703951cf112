"""kubeforge_cluster.podstatus: the status bodies the test driver and the pod player patch."""

from __future__ import annotations

import re
from typing import Any

from kubeforge_cluster.podstatus import readiness_status, terminated_status, timestamp_now

POD: dict[str, Any] = {
    "spec": {"containers": [{"name": "main", "image": "a:1"}, {"name": "side", "image": "b:2"}]},
    "status": {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
        ],
        "containerStatuses": [
            {"name": "main", "ready": True, "restartCount": 0},
            {"name": "side", "ready": True, "restartCount": 0},
        ],
    },
}


def _by_type(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_timestamp_is_rfc3339_seconds_utc() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", timestamp_now())


def test_readiness_replaces_only_the_readiness_conditions() -> None:
    st = readiness_status(POD, False)
    conds = _by_type(st)
    assert conds["PodScheduled"] == {"type": "PodScheduled", "status": "True"}
    assert conds["Ready"]["status"] == conds["ContainersReady"]["status"] == "False"
    assert len(st["conditions"]) == 3
    assert [c["ready"] for c in st["containerStatuses"]] == [False, False]
    assert readiness_status({"spec": {}}, True)["containerStatuses"] == []  # no status yet


def test_terminated_sets_phase_every_container_and_message_only_when_given() -> None:
    st = terminated_status(POD, "Failed", 3, "Error", "boom")
    assert st["phase"] == "Failed"
    assert [s["name"] for s in st["containerStatuses"]] == ["main", "side"]
    for s in st["containerStatuses"]:
        term = s["state"]["terminated"]
        assert (term["exitCode"], term["reason"], term["message"]) == (3, "Error", "boom")
        assert s["ready"] is False and s["image"] in ("a:1", "b:2")
    conds = _by_type(st)
    assert conds["Ready"]["reason"] == conds["ContainersReady"]["reason"] == "PodCompleted"
    assert conds["Ready"]["status"] == "False" and "PodScheduled" in conds
    ok = terminated_status(POD, "Succeeded", 0, "Completed", "")
    assert "message" not in ok["containerStatuses"][0]["state"]["terminated"]
