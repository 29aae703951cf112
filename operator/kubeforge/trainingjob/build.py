"""TrainingJob → desired children (pure): an Indexed batch/v1 Job and, for nodes > 1, a headless
Service for the torchrun rendezvous on pod 0."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubeforge.api.trainingjob import EXIT_BAD_CONFIG, EXIT_STOPPED, TrainingJobSpec
from kubeforge.apply import manifest_hash
from kubeforge.pod import (
    container_resources,
    downward_env,
    hp_env,
    pod_parts,
    scheduling_fields,
)
from kubeforge.progress.pod import progress_pod_parts
from kubeforge.settings import Settings

JSON = dict[str, Any]

KIND = "TrainingJob"
API_VERSION = "kubeforge.io/v1alpha1"
CONTAINER = "trainer"
"""Name of the main container (podFailurePolicy and the status function refer to it)."""
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
REPORT_DIR = "/kubeforge/bin"
REPORT_PYZ = f"{REPORT_DIR}/kubeforge-report.pyz"
REPORT_SOURCE = "/opt/kubeforge/bin/kubeforge-report.pyz"
SCRIPT_DIR = "/kubeforge/script"
OBJECTIVE_METRIC_ANNOTATION = "kubeforge.io/objective-metric"
"""On a TrainingJob (a TuningStudy sets it on its trials): the metric whose lines are the
intermediate reports; handed to kubeforge-report as `--metric` when metrics are collected from
stdout or a file, so other `name=value` text (e.g. `Namespace(lr=0.1)`) is not taken as a report.
Several metrics (a multi-objective study's) are comma-separated, the reported one first."""
TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True)
class Desired:
    """What a TrainingJob should have."""

    job: JSON
    """The Job's apply configuration (never `spec.suspend` when the job is queued)."""
    job_hash: str
    service: JSON | None
    service_hash: str | None
    queued: bool
    """Kueue owns `spec.suspend` of the Job (queueName set)."""

    def job_for_create(self) -> JSON:
        """The Job as first created: queued jobs start suspended (Kueue unsuspends them)."""
        if not self.queued:
            return self.job
        job = {**self.job, "spec": {**self.job["spec"], "suspend": True}}
        return job


def labels(settings: Settings, name: str) -> dict[str, str]:
    """kubeforge's labels on every child of TrainingJob `name` (and on its pods)."""
    return {
        settings.label("trainingjob"): name,
        settings.label("kind"): KIND,
        "app.kubernetes.io/managed-by": settings.field_manager,
    }


def owner_reference(tj: JSON) -> JSON:
    """controller=true, blockOwnerDeletion=true: deletion cascades, one controller."""
    meta = tj["metadata"]
    return {
        "apiVersion": tj.get("apiVersion", API_VERSION),
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def output_uri(spec: TrainingJobSpec, settings: Settings, namespace: str, name: str) -> str:
    """`spec.output.uri`, or the operator's default `<store>/<namespace>/<name>/`."""
    return spec.output.uri or settings.output_uri(namespace, name)


def job_document(tj: JSON, spec: TrainingJobSpec, out_uri: str) -> JSON:
    """The job document handed to the trainer in KUBEFORGE_JOB.

    Only what cannot change while the Job lives (a Job's pod template is immutable): `suspend`
    and `runPolicy`, the mutable fields, are left out.
    """
    doc_spec = spec.wire()
    doc_spec.pop("suspend", None)
    doc_spec.pop("runPolicy", None)
    doc_spec.setdefault("output", {})["uri"] = out_uri
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": tj["metadata"]["name"], "namespace": tj["metadata"]["namespace"]},
        "spec": doc_spec,
    }


def uses_report_wrapper(spec: TrainingJobSpec) -> bool:
    """kubeforge-report wraps the command when metrics come from stdout or a file."""
    return spec.metrics_collector.kind != "Trainer"


def exit_codes_meaningful(spec: TrainingJobSpec) -> bool:
    """Exit 2/3 mean bad config/stopped for the built-in trainer and under kubeforge-report only
    (a user script's own exit 3 is not taken as 'pruned')."""
    return not spec.command or uses_report_wrapper(spec)


def service_name(name: str) -> str:
    """The headless Service (= pods' subdomain) of a multi-node job."""
    return name


def master_addr(name: str) -> str:
    """Pod 0's DNS name: `<job>-0.<service>` (Indexed Job hostname + subdomain)."""
    return f"{name}-0.{service_name(name)}"


def objective_metric(tj: JSON) -> str:
    """The `kubeforge.io/objective-metric` annotation of the TrainingJob (empty when absent)."""
    value = ((tj.get("metadata") or {}).get("annotations") or {}).get(OBJECTIVE_METRIC_ANNOTATION)
    return value.strip() if isinstance(value, str) else ""


def launch_command(
    spec: TrainingJobSpec, name: str, settings: Settings, objective: str = ""
) -> list[str]:
    """The container command.

    - built-in trainer: `kubeforge-trainer`; your own program: `command + args`;
    - one pod with one process: run directly; otherwise `torchrun --no-python` (standalone for
      one node; static rendezvous on pod 0 with the node rank from the completion index), as
      `kubeforge-launch` for the built-in trainer so its exit codes 2 and 3 survive;
    - under `kubeforge-report` when metricsCollector is StdOut or File, told the `objective`
      metric (`--metric=NAME`, a trial's study objective) when there is one.
    """
    program = [*spec.command, *spec.args] if spec.command else ["kubeforge-trainer"]
    nodes = spec.resources.nodes
    procs = spec.resources.procs_per_node
    if nodes == 1 and procs == 1:
        cmd = program
    else:
        # The built-in trainer's image has kubeforge-launch, torchrun that keeps the exit codes
        # 2 (bad config) and 3 (stopped) which plain torchrun turns into 1; other images get
        # plain torchrun.
        launcher = "torchrun" if spec.command else "kubeforge-launch"
        cmd = [launcher, "--nnodes", str(nodes), "--nproc-per-node", str(procs)]
        if nodes == 1:
            cmd.append("--standalone")
        else:
            cmd += [
                "--node-rank",
                "$(JOB_COMPLETION_INDEX)",
                "--master-addr",
                master_addr(name),
                "--master-port",
                str(settings.master_port),
            ]
        cmd += ["--no-python", *program]
    if uses_report_wrapper(spec):
        mc = spec.metrics_collector
        wrapper = ["python3", REPORT_PYZ, "--collector", mc.kind.lower(), "--format", mc.format]
        if mc.path:
            wrapper += ["--path", mc.path]
        if mc.pattern:
            wrapper += ["--pattern", mc.pattern]
        # Several objectives (a multi-objective study) arrive comma-separated; the first one's
        # lines are the reports, and every one of them is collected.
        for metric in (m.strip() for m in objective.split(",")):
            if metric:
                wrapper.append(f"--metric={metric}")
        cmd = [*wrapper, "--", *cmd]
    return cmd


def pod_failure_policy(spec: TrainingJobSpec) -> JSON:
    """Fail at once on a bad configuration (and on a clean stop); ignore disruptions
    (preemption, node drain, eviction), which do not count against backoffLimit."""
    rules: list[JSON] = []
    if exit_codes_meaningful(spec):
        rules.append(
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": [EXIT_BAD_CONFIG, EXIT_STOPPED],
                },
            }
        )
    rules.append(
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    )
    return {"rules": rules}


def build(tj: JSON, spec: TrainingJobSpec, settings: Settings) -> Desired:
    """TrainingJob (`tj` = the object, `spec` = its validated spec) → desired children."""
    meta = tj["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    res = spec.resources
    gpus = res.gpus_per_node
    own = labels(settings, name)
    out_uri = output_uri(spec, settings, namespace, name)
    queued = bool(spec.scheduling.queue_name)

    env: list[JSON] = [
        {
            "name": "KUBEFORGE_JOB",
            "value": json.dumps(
                job_document(tj, spec, out_uri), sort_keys=True, separators=(",", ":")
            ),
        },
        *downward_env(),
        {"name": "KUBEFORGE_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "KUBEFORGE_OUTPUT_URI", "value": out_uri},
    ]
    if spec.model is not None and spec.model.script is not None and spec.model.script.config_map:
        env.append(
            {"name": "KUBEFORGE_SCRIPT_PATH", "value": f"{SCRIPT_DIR}/{spec.model.script.key}"}
        )
    env += hp_env(spec.hyperparameters)
    progress = progress_pod_parts(settings, namespace, name)
    env += progress.env

    inputs = [(spec.dataset.uri, spec.dataset.secret_ref)] if spec.dataset else []
    parts = pod_parts(
        spec.pod,
        own_labels=own,
        default_service_account=settings.trainer_service_account,
        env=env,
        inputs=inputs,
        outputs=[(out_uri, spec.output.secret_ref)],
    )

    # kubeforge's own volumes
    parts.volumes += progress.volumes
    parts.volume_mounts += progress.volume_mounts
    if res.shm_size:
        parts.volumes.append(
            {"name": "kubeforge-dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm_size}}
        )
        parts.volume_mounts.append({"name": "kubeforge-dshm", "mountPath": "/dev/shm"})
    if not spec.output.uri and settings.artifact_store.startswith("file://"):
        # the default pod-local store must be writable by a non-root user
        path = (
            settings.artifact_store[len("file://") :].rstrip("/") or "/var/lib/kubeforge/artifacts"
        )
        parts.volumes.append({"name": "kubeforge-artifacts", "emptyDir": {}})
        parts.volume_mounts.append({"name": "kubeforge-artifacts", "mountPath": path})
    script = spec.model.script if spec.model is not None else None
    if script is not None and script.config_map:
        parts.volumes.append({"name": "kubeforge-script", "configMap": {"name": script.config_map}})
        parts.volume_mounts.append(
            {"name": "kubeforge-script", "mountPath": SCRIPT_DIR, "readOnly": True}
        )

    image = spec.image or (settings.trainer_gpu_image if gpus > 0 else settings.trainer_image)
    container = parts.container(CONTAINER, image)
    container["command"] = launch_command(spec, name, settings, objective_metric(tj))
    container["resources"] = container_resources(res, gpus)
    container["terminationMessagePath"] = TERMINATION_LOG
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    if res.nodes > 1:
        container["ports"] = [
            {"name": "rendezvous", "containerPort": settings.master_port, "protocol": "TCP"}
        ]

    pod_spec: JSON = {
        **parts.pod_spec(),
        # no API credentials in training pods: they report through the progress endpoint
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "containers": [container],
        **scheduling_fields(spec.scheduling, gpus=gpus, gpu_resource=res.gpu_resource),
    }
    if uses_report_wrapper(spec):
        parts.volumes.append({"name": "kubeforge-bin", "emptyDir": {"sizeLimit": "64Mi"}})
        pod_spec["volumes"] = parts.volumes
        container["volumeMounts"] = [
            *container.get("volumeMounts", []),
            {"name": "kubeforge-bin", "mountPath": REPORT_DIR, "readOnly": True},
        ]
        pod_spec["initContainers"] = [
            {
                "name": "kubeforge-report",
                "image": settings.trainer_image,
                "imagePullPolicy": parts.image_pull_policy,
                "command": ["cp", REPORT_SOURCE, REPORT_PYZ],
                "securityContext": parts.container_security_context,
                "resources": {
                    "requests": {"cpu": "10m", "memory": "32Mi"},
                    "limits": {"cpu": "500m", "memory": "64Mi"},
                },
                "volumeMounts": [{"name": "kubeforge-bin", "mountPath": REPORT_DIR}],
            }
        ]
    elif parts.volumes:
        pod_spec["volumes"] = parts.volumes
    if res.nodes > 1:
        pod_spec["subdomain"] = service_name(name)

    template_meta: JSON = {"labels": parts.labels}
    if parts.annotations:
        template_meta["annotations"] = parts.annotations

    job_labels = dict(own)
    if queued:
        job_labels[QUEUE_LABEL] = spec.scheduling.queue_name
    rp = spec.run_policy
    job_spec: JSON = {
        "completions": res.nodes,
        "parallelism": res.nodes,
        "completionMode": "Indexed",
        "backoffLimit": rp.backoff_limit,
        "podFailurePolicy": pod_failure_policy(spec),
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if rp.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = rp.active_deadline_seconds
    if rp.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = rp.ttl_seconds_after_finished
    if not queued:
        job_spec["suspend"] = spec.suspend
    job: JSON = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": job_labels,
            "ownerReferences": [owner_reference(tj)],
        },
        "spec": job_spec,
    }
    job_hash = manifest_hash(job)
    job["metadata"]["annotations"] = {settings.label("spec-hash"): job_hash}

    service: JSON | None = None
    service_hash: str | None = None
    if res.nodes > 1:
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": service_name(name),
                "namespace": namespace,
                "labels": dict(own),
                "ownerReferences": [owner_reference(tj)],
            },
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {settings.label("trainingjob"): name, settings.label("kind"): KIND},
                "ports": [
                    {
                        "name": "rendezvous",
                        "port": settings.master_port,
                        "targetPort": settings.master_port,
                        "protocol": "TCP",
                    }
                ],
            },
        }
        service_hash = manifest_hash(service)
        service["metadata"]["annotations"] = {settings.label("spec-hash"): service_hash}
    return Desired(
        job=job, job_hash=job_hash, service=service, service_hash=service_hash, queued=queued
    )
