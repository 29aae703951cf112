"""What ModelDeployment's indexes hold: the index ids, the slim copies of the object, its
children and its model sources (memory: only what the reconcile and status read), and the
snapshot a reconcile gets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubeforge.api.rollout import ROLLOUT_ANNOTATION
from kubeforge.controller import slim_owner
from kubeforge.modeldeployment._deployment import CONTAINER

GROUP, VERSION, PLURAL = "kubeforge.io", "v1alpha1", "modeldeployments"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"

IDX_MD = "kubeforge-modeldeployments"
IDX_BY_SOURCE = "kubeforge-modeldeployment-by-source"
IDX_DEPLOY = "kubeforge-modeldeployment-deployments"
IDX_RS = "kubeforge-modeldeployment-replicasets"
IDX_PODS = "kubeforge-modeldeployment-pods"
IDX_SVC = "kubeforge-modeldeployment-services"
IDX_HPA = "kubeforge-modeldeployment-hpas"
IDX_PDB = "kubeforge-modeldeployment-pdbs"
IDX_SRC_TJ = "kubeforge-modeldeployment-source-trainingjobs"
IDX_SRC_TS = "kubeforge-modeldeployment-source-tuningstudies"
IDX_CAND_DEPLOY = "kubeforge-modeldeployment-candidate-deployments"
IDX_CAND_PODS = "kubeforge-modeldeployment-candidate-pods"
"""A progressive rollout's candidate Deployment and pods (label kubeforge.io/candidate-of)."""

WATCHED = {
    "Service": IDX_SVC,
    "HorizontalPodAutoscaler": IDX_HPA,
    "PodDisruptionBudget": IDX_PDB,
}
UNWATCHED = ("ServiceMonitor", "PrometheusRule", "ScaledObject")

JSON = dict[str, Any]


# --- slim copies kept in the indexes ---------------------------------------------------------


def slim_md(body: Any) -> JSON:
    return slim_owner(body, KIND, API_VERSION, annotations=(ROLLOUT_ANNOTATION,))


def _meta(body: Any) -> JSON:
    meta = body["metadata"]
    return {
        "name": meta["name"],
        "uid": meta.get("uid"),
        "generation": meta.get("generation"),
        "annotations": dict(meta.get("annotations") or {}),
        "labels": dict(meta.get("labels") or {}),
        "deletionTimestamp": meta.get("deletionTimestamp"),
        "ownerReferences": list(meta.get("ownerReferences") or []),
    }


def owns_replicas(body: Any, manager: str) -> bool:
    """Whether `manager` (by server-side apply) owns the Deployment's spec.replicas."""
    for entry in body["metadata"].get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {}):
            return True
    return False


def slim_deployment(body: Any, manager: str) -> JSON:
    spec = body.get("spec") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    return {
        "metadata": {**_meta(body), "ownsReplicas": owns_replicas(body, manager)},
        "spec": {
            "replicas": spec.get("replicas"),
            "template": {
                "spec": {
                    "containers": [
                        {"name": c.get("name"), "args": list(c.get("args") or [])}
                        for c in containers
                        if c.get("name") == CONTAINER
                    ]
                }
            },
        },
        "status": body.get("status") or {},
    }


def slim_child(body: Any) -> JSON:
    return {"metadata": _meta(body)}


def slim_pod(body: Any) -> JSON:
    status = body.get("status") or {}
    return {
        "metadata": {
            "name": body["metadata"]["name"],
            "labels": dict(body["metadata"].get("labels") or {}),
            "deletionTimestamp": body["metadata"].get("deletionTimestamp"),
        },
        "status": {
            "phase": status.get("phase"),
            "podIP": status.get("podIP"),
            "conditions": status.get("conditions") or [],
            "containerStatuses": status.get("containerStatuses") or [],
        },
    }


def slim_source(body: Any) -> JSON:
    status = body.get("status") or {}
    keep = {k: status[k] for k in ("phase", "artifacts", "bestTrial") if k in status}
    return {"metadata": {"name": body["metadata"]["name"]}, "status": keep}


def model_source_key(spec: Any) -> tuple[str, str] | None:
    """(kind, name) that `spec.model` refers to (from the raw spec; no validation)."""
    model = (spec or {}).get("model") or {}
    if model.get("fromTrainingJob"):
        return ("TrainingJob", str(model["fromTrainingJob"]))
    if model.get("fromTuningStudy"):
        return ("TuningStudy", str(model["fromTuningStudy"]))
    return None


@dataclass(frozen=True)
class Snapshot:
    md: JSON
    deployment: JSON | None
    replica_sets: list[JSON]
    pods: list[JSON]
    children: dict[str, JSON | None]
    source: JSON | None
    trial_job: JSON | None
    hpas: list[JSON] = field(default_factory=list)
    """Every HPA with the ModelDeployment's label: its own and KEDA's `keda-hpa-<name>`."""
