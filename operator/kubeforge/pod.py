"""`spec.pod` (+ resources, scheduling, storage URIs) → pod template pieces.

Shared by TrainingJob and ModelDeployment (and so by TuningStudy trials): every pod kubeforge
makes goes through `pod_parts()`, so Pod Security `restricted` holds for all of them.
Pure functions, no API access.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeforge.api import ComputeResources, PodSettings, Scheduling, hp_env_name, hp_env_value

JSON = dict[str, Any]

PVC_ROOT = "/mnt/pvc"
"""Where a `pvc://CLAIM/PATH` URI's claim is mounted: `/mnt/pvc/CLAIM` (the trainer, the server
and kubeforge-report map `pvc://CLAIM/PATH` to `/mnt/pvc/CLAIM/PATH`)."""

SECCOMP = {"type": "RuntimeDefault"}


def hp_env(hyperparameters: dict[str, Any]) -> list[JSON]:
    """`HP_<NAME>` variables for every hyperparameter, sorted by name (DESIGN.md mapping)."""
    return [
        {"name": hp_env_name(name), "value": hp_env_value(value)}
        for name, value in sorted(hyperparameters.items())
    ]


def expand_env_refs(text: str, env: dict[str, str]) -> str:
    """What the kubelet does to `$(VAR)` in command/args: defined variables expand, `$$` escapes,
    undefined references stay as written (for tests that check `$(HP_LR)`)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i):
            end = text.find(")", i + 2)
            if end == -1:
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(env[name] if name in env else text[i : end + 1])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def pod_security_context(pod: PodSettings) -> JSON:
    """The pod-level security context: non-root, the user's IDs, seccomp RuntimeDefault."""
    return {
        "runAsNonRoot": True,
        "runAsUser": pod.run_as_user,
        "runAsGroup": pod.run_as_group,
        "fsGroup": pod.fs_group,
        "seccompProfile": dict(SECCOMP),
    }


def container_security_context() -> JSON:
    """Every container's security context (PSS restricted)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": dict(SECCOMP),
    }


def pvc_of(uri: str) -> tuple[str, str] | None:
    """`pvc://CLAIM/PATH` → (CLAIM, PATH); anything else → None."""
    if not uri.startswith("pvc://"):
        return None
    rest = uri[len("pvc://") :]
    claim, _, path = rest.partition("/")
    return (claim, path) if claim else None


def pvc_path(uri: str) -> str:
    """The local path of a `pvc://CLAIM/PATH` URI inside the pod."""
    parsed = pvc_of(uri)
    if parsed is None:
        return uri
    return f"{PVC_ROOT}/{parsed[0]}/{parsed[1]}".rstrip("/")


def safe_name(prefix: str, name: str, limit: int = 63) -> str:
    """`prefix + name` as a DNS label, shortened with a hash when too long."""
    text = re.sub(r"[^a-z0-9-]", "-", (prefix + name).lower()).strip("-")
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return text[: limit - 9].rstrip("-") + "-" + digest


def container_resources(resources: ComputeResources, gpus: int = 0) -> JSON:
    """requests/limits: limits default to the requests; GPUs and extended resources in both."""
    requests: dict[str, str] = {"cpu": resources.cpu, "memory": resources.memory}
    limits: dict[str, str] = {
        "cpu": resources.cpu_limit or resources.cpu,
        "memory": resources.memory_limit or resources.memory,
    }
    if gpus > 0:
        requests[resources.gpu_resource] = str(gpus)
        limits[resources.gpu_resource] = str(gpus)
    for key, qty in sorted(resources.extended.items()):
        requests[key] = qty
        limits[key] = qty
    return {"requests": requests, "limits": limits}


def scheduling_fields(
    scheduling: Scheduling, *, gpus: int = 0, gpu_resource: str = "nvidia.com/gpu"
) -> JSON:
    """nodeSelector, tolerations (+ the GPU taint when GPUs are asked for), affinity, priority."""
    out: JSON = {}
    if scheduling.node_selector:
        out["nodeSelector"] = dict(sorted(scheduling.node_selector.items()))
    tolerations = [t.wire() for t in scheduling.tolerations]
    if gpus > 0:
        gpu_tol = {"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
        if gpu_tol not in tolerations:
            tolerations.append(gpu_tol)
    if tolerations:
        out["tolerations"] = tolerations
    affinity = scheduling.affinity.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    if affinity:
        out["affinity"] = affinity
    if scheduling.priority_class_name:
        out["priorityClassName"] = scheduling.priority_class_name
    return out


@dataclass
class PodParts:
    """The pieces of a pod template that `spec.pod` and the storage URIs decide."""

    service_account_name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    env: list[JSON]
    env_from: list[JSON]
    volumes: list[JSON] = field(default_factory=list)
    volume_mounts: list[JSON] = field(default_factory=list)
    image_pull_secrets: list[JSON] = field(default_factory=list)
    image_pull_policy: str = "IfNotPresent"
    security_context: JSON = field(default_factory=dict)
    container_security_context: JSON = field(default_factory=container_security_context)

    def pod_spec(self) -> JSON:
        """The pod-level fields (without containers)."""
        spec: JSON = {
            "serviceAccountName": self.service_account_name,
            "securityContext": self.security_context,
        }
        if self.volumes:
            spec["volumes"] = self.volumes
        if self.image_pull_secrets:
            spec["imagePullSecrets"] = self.image_pull_secrets
        return spec

    def container(self, name: str, image: str) -> JSON:
        """A container with the shared settings (env, envFrom, mounts, security, pull policy)."""
        c: JSON = {
            "name": name,
            "image": image,
            "imagePullPolicy": self.image_pull_policy,
            "securityContext": self.container_security_context,
        }
        if self.env:
            c["env"] = self.env
        if self.env_from:
            c["envFrom"] = self.env_from
        if self.volume_mounts:
            c["volumeMounts"] = self.volume_mounts
        return c


def user_volume(vol: Any) -> tuple[JSON, JSON]:
    """One `spec.pod.volumes[]` entry → (Volume, VolumeMount)."""
    source: JSON
    if vol.claim_name is not None:
        source = {"persistentVolumeClaim": {"claimName": vol.claim_name, "readOnly": vol.read_only}}
    elif vol.secret_name is not None:
        source = {"secret": {"secretName": vol.secret_name}}
    elif vol.config_map_name is not None:
        source = {"configMap": {"name": vol.config_map_name}}
    else:
        empty: JSON = {}
        if vol.empty_dir is not None and vol.empty_dir.size_limit:
            empty["sizeLimit"] = vol.empty_dir.size_limit
        source = {"emptyDir": empty}
    mount = {"name": vol.name, "mountPath": vol.mount_path, "readOnly": bool(vol.read_only)}
    return {"name": vol.name, **source}, mount


def pod_parts(
    pod: PodSettings,
    *,
    own_labels: dict[str, str],
    default_service_account: str,
    env: Sequence[JSON] = (),
    inputs: Sequence[tuple[str, str]] = (),
    outputs: Sequence[tuple[str, str]] = (),
) -> PodParts:
    """`spec.pod` → PodParts.

    - `own_labels`: kubeforge's labels (they win over the user's, whose kubeforge.io/ keys CEL
      refuses anyway).
    - `env`: kubeforge's variables, placed before the user's so `$(VAR)` in the user's values can
      refer to them.
    - `inputs` / `outputs`: (uri, secretRef) pairs: `pvc://` claims are mounted at
      `/mnt/pvc/CLAIM` (read-only for inputs, read-write if any output uses the claim); each
      secretRef becomes an `envFrom` Secret (the kubelet reads it, the operator never does).
    """
    labels = {**pod.labels, **own_labels}
    all_env = list(env) + [e.wire() for e in pod.env]
    env_from = [e.wire() for e in pod.env_from]
    volumes: list[JSON] = []
    mounts: list[JSON] = []
    for vol in pod.volumes:
        v, m = user_volume(vol)
        volumes.append(v)
        mounts.append(m)
    # pvc:// claims, read-write when any output writes there
    claims: dict[str, bool] = {}
    for uri, _ in inputs:
        parsed = pvc_of(uri)
        if parsed:
            claims.setdefault(parsed[0], False)
    for uri, _ in outputs:
        parsed = pvc_of(uri)
        if parsed:
            claims[parsed[0]] = True
    for claim, writable in sorted(claims.items()):
        name = safe_name("kubeforge-pvc-", claim)
        volumes.append(
            {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": not writable}}
        )
        mounts.append({"name": name, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": not writable})
    seen_secrets = {
        e["secretRef"]["name"] for e in env_from if isinstance(e.get("secretRef"), dict)
    }
    for _, secret in [*inputs, *outputs]:
        if secret and secret not in seen_secrets:
            env_from.append({"secretRef": {"name": secret}})
            seen_secrets.add(secret)
    return PodParts(
        service_account_name=pod.service_account_name or default_service_account,
        labels=labels,
        annotations=dict(pod.annotations),
        env=all_env,
        env_from=env_from,
        volumes=volumes,
        volume_mounts=mounts,
        image_pull_secrets=[{"name": n} for n in pod.image_pull_secrets],
        image_pull_policy=pod.image_pull_policy,
        security_context=pod_security_context(pod),
    )


def downward_env(prefix: str = "KUBEFORGE_") -> list[JSON]:
    """POD_NAME / POD_NAMESPACE from the downward API."""
    return [
        {"name": f"{prefix}POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": f"{prefix}POD_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
    ]


def restricted_violations(pod_spec: JSON) -> list[str]:
    """What in a pod spec breaks Pod Security `restricted` (empty: it passes).

    The checks of the restricted profile (v1.37) that a pod builder can get wrong; used by the
    unit tests over every `spec.pod` field, and by anyone who wants a quick check.
    """
    bad: list[str] = []
    psc = pod_spec.get("securityContext") or {}
    if pod_spec.get("hostNetwork") or pod_spec.get("hostPID") or pod_spec.get("hostIPC"):
        bad.append("host namespaces")
    allowed_volume_keys = {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
    for vol in pod_spec.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= allowed_volume_keys:
            bad.append(f"volume {vol.get('name')}: {sorted(kinds - allowed_volume_keys)}")
    if (psc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        pod_seccomp_ok = False
    else:
        pod_seccomp_ok = True
    if psc.get("runAsUser") == 0:
        bad.append("pod runAsUser 0")
    containers = [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c.get("name")
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            bad.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser") == 0:
            bad.append(f"{name}: runAsUser 0")
        c_seccomp = (sc.get("seccompProfile") or {}).get("type")
        if not pod_seccomp_ok and c_seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                bad.append(f"{name}: hostPort")
    return bad
