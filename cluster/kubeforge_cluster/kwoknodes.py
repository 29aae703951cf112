"""kwok's stages (how fake pods progress), its command line, and the fake nodes it manages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: Label that makes kwok complete a Job-owned pod with exit 0 even when auto_complete_jobs=False.
AUTO_COMPLETE_LABEL = "kubeforge.io/kwok-auto-complete"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_LABEL = "nvidia.com/gpu.present"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


def write_kwok_stages(stages_dir: Path, out: Path, auto_complete_jobs: bool) -> Path:
    """kwok's stock stages from ``stages_dir``, pod-complete limited to labelled pods unless
    ``auto_complete_jobs``, written to ``out``."""
    src = stages_dir
    docs: list[Any] = []
    for f in (
        "node-initialize.yaml",
        "node-heartbeat-with-lease.yaml",
        "pod-ready.yaml",
        "pod-delete.yaml",
    ):
        docs.extend(d for d in yaml.safe_load_all((src / f).read_text()) if d)
    complete = next(d for d in yaml.safe_load_all((src / "pod-complete.yaml").read_text()) if d)
    if auto_complete_jobs:
        docs.append(complete)
    else:
        # Job pods complete only when labelled for it; otherwise the test drives them.
        complete["metadata"]["name"] = "pod-complete-labelled"
        complete["spec"]["selector"]["matchExpressions"].append(
            {
                "key": f'.metadata.labels["{AUTO_COMPLETE_LABEL}"]',
                "operator": "In",
                "values": ["true"],
            }
        )
        docs.append(complete)
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


def kwok_args(exe: Path, kubeconfig: Path, stages: Path, port: int) -> list[str]:
    return [
        str(exe),
        f"--kubeconfig={kubeconfig}",
        f"--config={stages}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
        "--cidr=10.244.0.0/16",
        "--node-ip=10.200.0.1",
        f"--server-address=127.0.0.1:{port}",
    ]


def fake_node(name: str, gpus: int, kwok_taint: bool) -> dict[str, Any]:
    """A Node for kwok to manage: 32 CPU, 128Gi; ``gpus`` > 0 adds the GPUs, label and taint."""
    capacity = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"}
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "node.kubernetes.io/instance-type": "kwok-gpu" if gpus else "kwok-cpu",
    }
    taints = []
    if kwok_taint:
        taints.append({"key": KWOK_NODE_ANNOTATION, "value": "fake", "effect": "NoSchedule"})
    if gpus:
        capacity[GPU_RESOURCE] = str(gpus)
        labels[GPU_LABEL] = "true"
        labels["nvidia.com/gpu.count"] = str(gpus)
        taints.append({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }
