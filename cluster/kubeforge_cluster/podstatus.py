"""Pod status bodies written by whoever plays the kubelet here: the kwok-cluster test driver
(:class:`kubeforge_cluster.testing.PodDriver`) and the host pod player
(:mod:`kubeforge_cluster.podplayer`). Both patch the same shapes onto ``pods/<name>/status``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]

#: The conditions a container's readiness moves together.
READINESS_CONDITIONS = ("Ready", "ContainersReady")


def timestamp_now() -> str:
    """The current time as the API server writes it (RFC 3339, seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _other_conditions(pod: JSON) -> list[JSON]:
    return [
        c
        for c in (pod.get("status") or {}).get("conditions") or []
        if c["type"] not in READINESS_CONDITIONS
    ]


def readiness_status(pod: JSON, ready: bool) -> JSON:
    """Status patch setting the pod's readiness conditions and every container's ``ready``."""
    s = "True" if ready else "False"
    conds = _other_conditions(pod) + [
        {"type": t, "status": s, "lastTransitionTime": timestamp_now()}
        for t in READINESS_CONDITIONS
    ]
    cs = [dict(c, ready=ready) for c in (pod.get("status") or {}).get("containerStatuses") or []]
    return {"conditions": conds, "containerStatuses": cs}


def terminated_status(pod: JSON, phase: str, exit_code: int, reason: str, message: str) -> JSON:
    """Status patch ending the pod in ``phase`` (Succeeded/Failed): every container
    ``state.terminated`` with ``exit_code``/``reason`` (and ``message`` if any), not ready."""
    at = timestamp_now()
    statuses = []
    for c in pod["spec"]["containers"]:
        terminated: JSON = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": at,
            "finishedAt": at,
        }
        if message:
            terminated["message"] = message
        statuses.append(
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"terminated": terminated},
            }
        )
    conds = _other_conditions(pod) + [
        {"type": t, "status": "False", "reason": "PodCompleted", "lastTransitionTime": at}
        for t in READINESS_CONDITIONS
    ]
    return {"phase": phase, "conditions": conds, "containerStatuses": statuses}
