"""Resolved model + observed Deployment, ReplicaSets and pods + previous status → ModelDeployment
status (pure).

Phases:
- Pending: nothing to run yet (waiting for the model, pods not scheduled, scaled to zero);
- Loading: server pods run but none is ready yet (downloading, loading, warming the model);
- Ready: every desired replica is ready on the current spec;
- Progressing: a rollout (new ReplicaSet) or a scale-up is under way, with no failures;
- Degraded: fewer replicas ready than desired and a pod fails (crash loop, load failure, image
  pull), or a new model that cannot be served while the previous one still is;
- Failed: nothing is served and it will not get better by itself (not an ONNX model, the
  rollout exceeded its progress deadline with no replica ready).

Conditions: Ready, ModelLoaded (a replica on the current spec has the model loaded and warmed:
readiness is exactly that), Progressing.
"""

from __future__ import annotations

from typing import Any

from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.conditions import copy_conditions, get_condition, set_condition
from kubeforge.modeldeployment._children import url
from kubeforge.modeldeployment._deployment import CONTAINER
from kubeforge.modeldeployment.resolve import UNSUPPORTED, Resolved

JSON = dict[str, Any]

MAX_MESSAGE = 1024
REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"

FAILING_WAIT_REASONS = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


def current_hash(deployment: JSON, replica_sets: list[JSON]) -> str | None:
    """The pod-template-hash of the Deployment's current ReplicaSet (same revision)."""
    rev = ((deployment.get("metadata") or {}).get("annotations") or {}).get(REVISION)
    if rev is None:
        return None
    for rs in replica_sets:
        meta = rs.get("metadata") or {}
        if (meta.get("annotations") or {}).get(REVISION) == rev:
            return (meta.get("labels") or {}).get(HASH_LABEL)
    return None


def _alive(pod: JSON) -> bool:
    meta = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase")
    return not meta.get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def _server_status(pod: JSON) -> JSON:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return dict(cs)
    return {}


def pod_ready(pod: JSON) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def pod_problem(pod: JSON) -> tuple[str, str] | None:
    """(reason, message) when the pod's server container fails: a crash loop or load failure
    (with the last termination message: the server writes why the model did not load), an image
    that cannot be pulled, a bad configuration. None when it is fine or merely starting."""
    name = (pod.get("metadata") or {}).get("name", "?")
    cs = _server_status(pod)
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    last = (cs.get("lastState") or {}).get("terminated") or {}
    term = state.get("terminated") or {}
    if waiting.get("reason") in FAILING_WAIT_REASONS:
        reason = str(waiting["reason"])
        detail = ""
        if last:
            detail = f"last exit code {last.get('exitCode')} ({last.get('reason') or 'Error'})"
            text = (last.get("message") or "").strip()
            if text:
                detail += ": " + text[-600:]
        elif waiting.get("message"):
            detail = str(waiting["message"])[-600:]
        restarts = cs.get("restartCount") or 0
        msg = f"pod {name}: {reason}"
        if restarts:
            msg += f" (restarted {restarts} times)"
        return reason, msg + (f"; {detail}" if detail else "")
    if term and term.get("exitCode") not in (0, None):
        text = (term.get("message") or "").strip()
        reason = str(term.get("reason") or "Error")
        msg = f"pod {name}: server exited with code {term.get('exitCode')} ({reason})"
        return reason, msg + (f": {text[-600:]}" if text else "")
    return None


def unschedulable(pod: JSON) -> str | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            name = (pod.get("metadata") or {}).get("name", "?")
            return f"pod {name} unschedulable: {cond.get('message') or cond.get('reason') or ''}"
    return None


def _running(pod: JSON) -> bool:
    return "running" in (_server_status(pod).get("state") or {})


def compute_status(
    md: JSON,
    spec: ModelDeploymentSpec,
    resolved: Resolved,
    deployment: JSON | None,
    pods: list[JSON],
    *,
    now: str,
    replica_sets: list[JSON] | None = None,
    served_uri: str | None = None,
) -> JSON:
    """The whole desired status (wire shape). `md` carries metadata and the previous status.

    `served_uri`: the model the live Deployment runs (its `--model` argument); the sha256 is
    reported when it is the resolved model's (the TrainingJob's artefact record).
    """
    meta = md.get("metadata") or {}
    name, namespace = meta.get("name", ""), meta.get("namespace", "")
    gen = meta.get("generation")
    prev: JSON = md.get("status") or {}
    conds = copy_conditions(prev.get("conditions"))

    def cond(type_: str, status: bool, reason: str, message: str = "") -> None:
        set_condition(
            conds, type_, status, reason, message[:MAX_MESSAGE], now=now, observed_generation=gen
        )

    desired = spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas
    counts = {"desired": desired, "ready": 0, "updated": 0}
    phase, message = "Pending", ""

    if deployment is None:
        if not resolved.ok:
            phase = "Failed" if resolved.reason == UNSUPPORTED else "Pending"
            message = resolved.message
            cond("ModelLoaded", False, resolved.reason, message)
            cond("Ready", False, resolved.reason, message)
            cond("Progressing", False, resolved.reason, message)
        else:
            message = "creating the server Deployment"
            cond("ModelLoaded", False, "Creating", message)
            cond("Ready", False, "Creating", message)
            cond("Progressing", True, "Creating", message)
    else:
        dspec = deployment.get("spec") or {}
        dst = deployment.get("status") or {}
        dmeta = deployment.get("metadata") or {}
        if spec.autoscaling is not None or dspec.get("replicas") is not None:
            desired = int(dspec.get("replicas", desired))
        ready = int(dst.get("readyReplicas") or 0)
        updated = int(dst.get("updatedReplicas") or 0)
        total = int(dst.get("replicas") or 0)
        available = int(dst.get("availableReplicas") or 0)
        counts = {"desired": desired, "ready": ready, "updated": updated}
        observed = dst.get("observedGeneration", 0) >= (dmeta.get("generation") or 0)

        chash = current_hash(deployment, replica_sets or [])
        live = [p for p in pods if _alive(p)]
        if chash is not None:
            current = [
                p
                for p in live
                if (p.get("metadata") or {}).get("labels", {}).get(HASH_LABEL) == chash
            ]
        else:
            current = live
        problems = [p for p in (pod_problem(x) for x in current) if p is not None]
        pending = [m for m in (unschedulable(x) for x in current) if m is not None]
        current_ready = [p for p in current if pod_ready(p)]
        dconds = dst.get("conditions") or []
        prog = get_condition(dconds, "Progressing") or {}
        deadline = (
            prog.get("status") == "False" and prog.get("reason") == "ProgressDeadlineExceeded"
        )
        repfail = get_condition(dconds, "ReplicaFailure") or {}

        rolling = (not observed) or updated < desired or total > updated
        complete = observed and not rolling and ready >= desired and available >= desired

        # ModelLoaded: a replica on the current spec is ready (loaded + warmed)
        if current_ready or (complete and desired > 0):
            shown = served_uri or resolved.uri
            cond(
                "ModelLoaded",
                True,
                "Loaded",
                f"model {shown} loaded and warmed" if shown else "model loaded and warmed",
            )
        elif problems:
            cond("ModelLoaded", False, problems[0][0], problems[0][1])
        elif desired == 0:
            cond("ModelLoaded", False, "ScaledToZero", "no replicas")
        else:
            cond("ModelLoaded", False, "Loading", "waiting for a replica to load the model")

        # phase and message
        if desired == 0:
            phase, message = "Pending", "scaled to zero replicas"
        elif complete:
            phase = "Ready"
            message = f"{ready}/{desired} replicas ready"
        elif problems:
            phase = "Degraded"
            message = f"{ready}/{desired} replicas ready; {problems[0][1]}"
        elif deadline:
            phase = "Failed" if ready == 0 else "Degraded"
            message = f"{ready}/{desired} replicas ready; {prog.get('message') or 'rollout stuck'}"
        elif repfail.get("status") == "True":
            phase = "Degraded" if ready else "Pending"
            message = f"{ready}/{desired} replicas ready; {repfail.get('message', '')}"
        elif ready == 0:
            if pending:
                phase, message = "Pending", pending[0]
            elif any(_running(p) for p in current):
                phase, message = "Loading", "loading and warming the model"
            else:
                phase, message = "Pending", "waiting for the server pods to start"
        else:
            phase = "Progressing"
            if updated < desired or total > updated:
                message = f"rolling out: {updated}/{desired} replicas updated, {ready} ready"
            else:
                message = f"scaling: {ready}/{desired} replicas ready"
            if pending:
                message += f"; {pending[0]}"

        # a new model that cannot be served (yet): the previous one still is
        if not resolved.ok:
            keep = f"; still serving {served_uri}" if served_uri else ""
            cond("ModelLoaded", False, resolved.reason, resolved.message + keep)
            if resolved.reason == UNSUPPORTED:
                phase = "Degraded"
            elif phase == "Ready":
                phase = "Progressing"
            message = resolved.message + keep

        if complete and desired > 0:
            cond("Ready", True, "MinimumReplicasAvailable", f"{ready}/{desired} replicas ready")
        elif desired == 0:
            cond("Ready", False, "ScaledToZero", "no replicas")
        elif problems and ready < desired:
            cond("Ready", ready > 0, problems[0][0], message)
        else:
            cond(
                "Ready",
                ready >= desired,
                "ReplicasReady" if ready >= desired else "ReplicasNotReady",
                f"{ready}/{desired} replicas ready",
            )

        if deadline:
            cond("Progressing", False, "ProgressDeadlineExceeded", prog.get("message") or "")
        elif rolling:
            cond(
                "Progressing",
                True,
                "RollingUpdate",
                f"{updated}/{desired} replicas updated, {ready} ready",
            )
        elif ready < desired:
            cond("Progressing", True, "ScalingUp", f"{ready}/{desired} replicas ready")
        else:
            cond("Progressing", False, "Complete", "rollout complete")

    out: JSON = {
        "phase": phase,
        "message": message[:MAX_MESSAGE],
        "observedGeneration": gen,
        "conditions": conds,
        "url": url(name, namespace),
        "replicas": counts,
    }
    model_uri = served_uri or resolved.uri
    if model_uri:
        # inputs/outputs as the CRD defaults them (empty: see docs), so re-reads compare equal
        model: JSON = {"uri": model_uri, "inputs": [], "outputs": []}
        if resolved.sha256 and resolved.uri == model_uri:
            model["sha256"] = resolved.sha256
        out["model"] = model
    if gen is None:
        del out["observedGeneration"]
    return out
