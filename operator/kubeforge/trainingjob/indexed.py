"""What TrainingJob's indexes hold: the index ids, the slim copies of the object and its children
(memory: only what the reconcile and status read), and the snapshot a reconcile gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubeforge.controller import slim_owner
from kubeforge.trainingjob import build as tjbuild
from kubeforge.trainingjob import status as tjstatus

GROUP, VERSION, PLURAL = "kubeforge.io", "v1alpha1", "trainingjobs"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingJob"

IDX_TJ = "kubeforge-trainingjobs"
IDX_JOBS = "kubeforge-trainingjob-jobs"
IDX_PODS = "kubeforge-trainingjob-pods"
IDX_SVCS = "kubeforge-trainingjob-services"
IDX_WORKLOADS = "kubeforge-trainingjob-workloads"

JSON = dict[str, Any]


# --- slim copies kept in the indexes (memory: only what reconcile and status read) -----------


def slim_tj(body: Any) -> JSON:
    # only the annotations read: a trial's objective (builder, for kubeforge-report) and its
    # owner's stop request (the progress endpoint answers it to the trainer)
    return slim_owner(
        body, KIND, API_VERSION, (tjbuild.OBJECTIVE_METRIC_ANNOTATION, tjstatus.STOP)
    )


def slim_child(body: Any) -> JSON:
    meta = body["metadata"]
    return {
        "metadata": {
            "name": meta["name"],
            "uid": meta.get("uid"),
            "annotations": meta.get("annotations") or {},
            "labels": meta.get("labels") or {},
            "deletionTimestamp": meta.get("deletionTimestamp"),
            "ownerReferences": meta.get("ownerReferences") or [],
        },
        "spec": {"suspend": (body.get("spec") or {}).get("suspend")},
        "status": body.get("status") or {},
    }


def slim_pod(body: Any) -> JSON:
    meta = body["metadata"]
    status = body.get("status") or {}
    return {
        "metadata": {
            "name": meta["name"],
            "annotations": meta.get("annotations") or {},
            "labels": meta.get("labels") or {},
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "status": {
            "phase": status.get("phase"),
            "conditions": status.get("conditions") or [],
            "containerStatuses": status.get("containerStatuses") or [],
        },
    }


def same_view(a: Snapshot, b: Snapshot) -> bool:
    """Whether two snapshots hold the very same index values (identity, not equality)."""
    return (
        a.tj is b.tj
        and a.job is b.job
        and a.service is b.service
        and a.workload is b.workload
        and a.reported is b.reported
        and len(a.pods) == len(b.pods)
        and all(x is y for x, y in zip(a.pods, b.pods, strict=True))
    )


@dataclass(frozen=True)
class Snapshot:
    tj: JSON
    job: JSON | None
    pods: list[JSON]
    service: JSON | None
    workload: JSON | None
    reported: JSON | None = None
    """The newest progress report the endpoint received (kubeforge.progress)."""
