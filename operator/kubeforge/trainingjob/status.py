"""Observed Job + pods (+ Kueue Workload) + previous status → TrainingJob status (pure).

Phases: Pending (Job created, pods not running yet) → Queued (Kueue holds it) → Running →
Succeeded | Failed; Suspended when the user suspends it. Conditions: Created, Admitted (queued
jobs only), Running, Suspended (once it applies), Succeeded / Failed (when finished).
"""

from __future__ import annotations

import json
from typing import Any

from kubeforge.api.trainingjob import EXIT_BAD_CONFIG, EXIT_STOPPED, TrainingJobSpec
from kubeforge.conditions import copy_conditions, get_condition, is_true, set_condition
from kubeforge.progress.reports import finite_numbers
from kubeforge.trainingjob.build import CONTAINER, exit_codes_meaningful

JSON = dict[str, Any]

INDEX_KEY = "batch.kubernetes.io/job-completion-index"
STOP = "kubeforge.io/stop"
"""Annotation of the TrainingJob (written by its owner, e.g. a TuningStudy) asking it to stop."""
MAX_MESSAGE = 1024


def completion_index(pod: JSON) -> int | None:
    """The pod's completion index (node rank), from its annotation or label."""
    meta = pod.get("metadata", {})
    raw = (meta.get("annotations") or {}).get(INDEX_KEY) or (meta.get("labels") or {}).get(
        INDEX_KEY
    )
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def main_container(pod: JSON) -> JSON | None:
    """The status of the `trainer` container."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return dict(cs)
    return None


def terminations(pod: JSON) -> list[JSON]:
    """The main container's terminated states, newest first (state, then lastState)."""
    cs = main_container(pod)
    if cs is None:
        return []
    out = []
    for key in ("state", "lastState"):
        term = (cs.get(key) or {}).get("terminated")
        if term:
            out.append(term)
    return out


def parse_result(message: str | None) -> JSON | None:
    """The trainer's termination message `{"metrics": {...}, "artifacts": {...}}`, else None."""
    if not message:
        return None
    try:
        data = json.loads(message)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def final_result(pods: list[JSON]) -> JSON | None:
    """Rank 0's successful termination message."""
    for pod in pods:
        if completion_index(pod) not in (0, None):
            continue
        for term in terminations(pod):
            if term.get("exitCode") == 0:
                result = parse_result(term.get("message"))
                if result is not None:
                    return result
    return None


def artifacts_of(result: JSON) -> JSON | None:
    raw = result.get("artifacts")
    if not isinstance(raw, dict):
        return None
    out: JSON = {}
    for key in ("model", "checkpoint", "sha256", "modelInt8", "sha256Int8"):
        if isinstance(raw.get(key), str) and raw[key]:
            out[key] = raw[key]
    for key in ("bytes", "bytesInt8"):
        if isinstance(raw.get(key), int) and not isinstance(raw.get(key), bool):
            out[key] = raw[key]
    return out or None


def failure_detail(
    pods: list[JSON], meaningful: bool = True, stop: str | None = None
) -> tuple[str, str] | None:
    """(reason, message) of the most telling failed pod: a bad config or a stop beats others.

    Exit codes 2 (bad configuration) and 3 (stopped) have their meaning only when `meaningful`:
    for the built-in trainer and under kubeforge-report, not for a user's own command without a
    metricsCollector (its exit 3 is an error like any other)."""
    found: list[tuple[int, str, str]] = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        rank = completion_index(pod)
        for term in terminations(pod):
            code = term.get("exitCode")
            if code in (0, None):
                continue
            text = (term.get("message") or "").strip()
            parsed = parse_result(text)
            if parsed is not None:
                text = str(parsed.get("error") or parsed.get("message") or "")
            cause = term.get("reason") or "Error"
            if meaningful and code == EXIT_BAD_CONFIG:
                reason, prio = "BadConfiguration", 0
            elif meaningful and code == EXIT_STOPPED:
                reason, prio = "Stopped", 1
                text = text or f"stopped ({stop or 'requested'})"
            elif cause == "OOMKilled":
                reason, prio = "OOMKilled", 2
            else:
                reason, prio = "Error", 3
            msg = f"pod {name} (rank {rank}) exited with code {code} ({cause})"
            if text:
                msg += ": " + text[-600:]
            found.append((prio, reason, msg))
            break
    if not found:
        return None
    found.sort(key=lambda f: f[0])
    return found[0][1], found[0][2]


def pending_detail(pods: list[JSON]) -> str:
    """Why pods are not running yet (unschedulable, image pull...)."""
    for pod in pods:
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return f"pod {pod['metadata'].get('name')} unschedulable: {cond.get('message', '')}"
        cs = main_container(pod) or {}
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            return f"pod {pod['metadata'].get('name')}: {waiting.get('reason')}: {waiting.get('message', '')}"
    return "waiting for the pods to start"


def kueue_detail(workload: JSON | None, job: JSON) -> tuple[str, str]:
    """(reason, message) of a job Kueue holds, from its Workload when visible."""
    conds = (workload or {}).get("status", {}).get("conditions") or []
    for ctype in ("Evicted", "QuotaReserved", "Admitted"):
        cond = get_condition(conds, ctype)
        if cond is None:
            continue
        if ctype == "Evicted" and cond.get("status") == "True":
            return cond.get("reason") or "Evicted", cond.get("message") or "evicted by Kueue"
        if ctype != "Evicted" and cond.get("status") == "False" and cond.get("message"):
            return cond.get("reason") or "Pending", cond["message"]
    jc = get_condition((job.get("status") or {}).get("conditions"), "Suspended")
    if jc is not None and jc.get("message"):
        return "Pending", f"waiting for Kueue to admit the job ({jc['message']})"
    return "Pending", "waiting for Kueue to admit the job"


def compute_status(
    tj: JSON,
    spec: TrainingJobSpec,
    job: JSON | None,
    pods: list[JSON],
    *,
    now: str,
    workload: JSON | None = None,
    reported: JSON | None = None,
) -> JSON:
    """The whole desired status (wire shape). `tj` carries metadata and the previous status;
    `reported`: the newest progress report of rank 0 (`status.progress` shape) the endpoint
    received, if any."""
    prev: JSON = tj.get("status") or {}
    gen = (tj.get("metadata") or {}).get("generation")
    conds = copy_conditions(prev.get("conditions"))
    queued = bool(spec.scheduling.queue_name)
    st: JSON = {}

    def cond(type_: str, status: bool, reason: str, message: str = "") -> None:
        set_condition(conds, type_, status, reason, message, now=now, observed_generation=gen)

    prev_nodes = prev.get("nodes") or {}
    restarts = int(prev.get("restarts") or 0)
    phase = "Pending"
    message = ""

    if job is None:
        cond("Created", False, "Creating", "creating the Job")
        message = "creating the Job"
        nodes = {"active": 0, "succeeded": 0, "failed": 0}
    else:
        jst = job.get("status") or {}
        jconds = jst.get("conditions") or []
        nodes = {
            "active": 0,  # pods running (set below; the Job's `active` also counts pending pods)
            "succeeded": int(jst.get("succeeded") or 0),
            "failed": int(jst.get("failed") or 0),
        }
        cond("Created", True, "JobCreated", f"Job {job['metadata']['name']} created")
        job_suspended = bool((job.get("spec") or {}).get("suspend"))
        running_pods = [
            p
            for p in pods
            if (p.get("status") or {}).get("phase") == "Running"
            and not (p.get("metadata") or {}).get("deletionTimestamp")
        ]
        nodes["active"] = len(running_pods)
        restarts += max(0, nodes["failed"] - int(prev_nodes.get("failed") or 0))

        complete = is_true(jconds, "Complete") or is_true(jconds, "SuccessCriteriaMet")
        failed_c = get_condition(jconds, "Failed")
        if failed_c is None or failed_c.get("status") != "True":
            failed_c = get_condition(jconds, "FailureTarget")
            if failed_c is not None and failed_c.get("status") != "True":
                failed_c = None

        if complete:
            phase = "Succeeded"
            message = "training finished"
            cond("Running", False, "Completed", "the job finished")
            cond("Succeeded", True, "Completed", "all pods finished successfully")
            st["completionTime"] = jst.get("completionTime") or prev.get("completionTime") or now
        elif failed_c is not None:
            phase = "Failed"
            reason = failed_c.get("reason") or "Failed"
            message = failed_c.get("message") or "the job failed"
            stop = ((tj.get("metadata") or {}).get("annotations") or {}).get(STOP)
            detail = failure_detail(pods, exit_codes_meaningful(spec), stop)
            if detail is not None:
                if reason in ("PodFailurePolicy", "BackoffLimitExceeded", "Failed"):
                    reason = detail[0]
                message = f"{message}; {detail[1]}"
            cond("Running", False, reason, message[:MAX_MESSAGE])
            cond("Failed", True, reason, message[:MAX_MESSAGE])
            st["completionTime"] = (
                prev.get("completionTime") or failed_c.get("lastTransitionTime") or now
            )
        elif job_suspended:
            if prev.get("phase") == "Running":
                restarts += 1  # preempted or suspended while running: the next start is a restart
            if queued and not spec.suspend:
                phase = "Queued"
                reason, message = kueue_detail(workload, job)
                message = f"queue {spec.scheduling.queue_name}: {message}"
                cond("Admitted", False, reason, message[:MAX_MESSAGE])
                cond("Running", False, "Queued", "waiting for Kueue")
            else:
                phase = "Suspended"
                message = "suspended (spec.suspend)"
                cond("Suspended", True, "Suspended", message)
                cond("Running", False, "Suspended", message)
        else:
            if queued:
                cond(
                    "Admitted",
                    True,
                    "Admitted",
                    f"admitted by Kueue from queue {spec.scheduling.queue_name}",
                )
            if get_condition(conds, "Suspended") is not None:
                cond("Suspended", False, "Resumed", "")
            if running_pods or int(jst.get("ready") or 0) > 0:
                phase = "Running"
                message = (
                    f"{len(running_pods) or jst.get('ready')}/{spec.resources.nodes} pods running"
                )
                cond("Running", True, "PodsRunning", message)
            else:
                phase = "Pending"
                message = pending_detail(pods)
                cond("Running", False, "PodsPending", message[:MAX_MESSAGE])

    start = prev.get("startTime")
    if start is None and job is not None and phase in ("Running", "Succeeded", "Failed"):
        start = (job.get("status") or {}).get("startTime") or now
    if start:
        st["startTime"] = start

    progress = reported or prev.get("progress")
    metrics = prev.get("metrics") or {}
    artifacts = prev.get("artifacts")
    result = final_result(pods) if phase == "Succeeded" else None
    if result is not None:
        metrics = finite_numbers(result.get("metrics"))
        artifacts = artifacts_of(result)
        if progress is None and metrics:
            progress = {"metrics": metrics}

    out: JSON = {
        "phase": phase,
        "message": message[:MAX_MESSAGE],
        "observedGeneration": gen,
        "conditions": conds,
        **({"startTime": st["startTime"]} if "startTime" in st else {}),
        **({"completionTime": st["completionTime"]} if "completionTime" in st else {}),
        "nodes": nodes,
        "restarts": restarts,
        "metrics": metrics,
    }
    if progress:
        out["progress"] = progress
    if artifacts:
        out["artifacts"] = artifacts
    if gen is None:
        del out["observedGeneration"]
    return out
