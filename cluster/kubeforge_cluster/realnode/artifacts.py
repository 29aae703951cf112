"""The node's artifact store: a hostPath PersistentVolume per namespace, pre-bound to a claim."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..procs import tail_log
from .runstate import NodeStartError

ARTIFACT_CLAIM = "kubeforge-artifacts"
"""The claim the real node's artifact store is reached by (operator ``pvc://kubeforge-artifacts/``)."""
ARTIFACT_LABEL = "kubeforge.io/artifact-store"


def create_artifact_store(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    artifacts_dir: Path,
    node_name: str,
    controller_manager_log: Path,
    namespace: str,
    claim: str = ARTIFACT_CLAIM,
    fs_group: int = 1000,
) -> str:
    """A shared artifact store for the pods of ``namespace``; returns its URI for the
    operator's ``artifactStore`` (``pvc://CLAIM/``).

    A ReadWriteMany hostPath PersistentVolume (``<run dir>/artifacts/<namespace>``, one
    directory per namespace so namespaces do not see each other's models) pre-bound to the
    claim ``CLAIM`` in ``namespace`` (PV ``claimRef`` + PVC ``volumeName``, empty storage
    class: no provisioner involved; the binder controller completes the binding). The
    kubelet does not apply ``fsGroup`` to hostPath volumes, so the directory is made the way
    fsGroup would: group ``fs_group`` (the pods' default fsGroup/runAsGroup), setgid,
    group-writable (2775), so the restricted-PSS trainer (uid 1000, gid 1000) writes there and
    new folders keep the group. Idempotent; a volume left ``Released`` by a deleted namespace
    is replaced (the files stay)."""
    host = artifacts_dir / namespace
    host.mkdir(parents=True, exist_ok=True)
    for d in (artifacts_dir, host):
        os.chown(d, 0, fs_group)
        d.chmod(0o2775)
    pv_name = f"{claim}-{namespace}"
    r = kubectl("get", "pv", pv_name, "-o", "json", check=False)
    if r.returncode == 0 and json.loads(r.stdout).get("status", {}).get("phase") in (
        "Released",
        "Failed",
    ):
        kubectl("delete", "pv", pv_name, "--wait=true", "--timeout=60s")
    size = "10Gi"
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "labels": {ARTIFACT_LABEL: namespace}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": str(host), "type": "Directory"},
            "claimRef": {"namespace": namespace, "name": claim},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [node_name],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "volumeName": pv_name,
            "resources": {"requests": {"storage": size}},
        },
    }
    kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"kind": "List", "apiVersion": "v1", "items": [pv, pvc]}),
    )
    deadline = time.monotonic() + 60
    while True:
        r = kubectl(
            "-n", namespace, "get", "pvc", claim, "-o", "jsonpath={.status.phase}", check=False
        )
        if r.stdout.strip() == "Bound":
            return f"pvc://{claim}/"
        if time.monotonic() > deadline:
            raise NodeStartError(
                f"claim {namespace}/{claim} not Bound after 60s ({r.stdout}{r.stderr}); "
                + tail_log(controller_manager_log, 20)
            )
        time.sleep(0.3)
