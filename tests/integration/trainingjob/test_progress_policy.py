"""The progress channel's guard on the real API server: a trainer pod's bound token may change
only `kubeforge.io/progress`, only on its own Pod."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tj_support import apply, trainingjob, wait_phase

pytestmark = pytest.mark.integration

POLICY = Path(__file__).resolve().parents[3] / "operator/kubeforge/manifests/progress-policy.yaml"


def patch_as(cluster: Any, token: str, namespace: str, pod: str, annotations: dict[str, str]) -> int:
    ctx = ssl.create_default_context(cafile=str(Path(cluster.pki_dir) / "ca.crt"))
    req = urllib.request.Request(
        f"{cluster.server}/api/v1/namespaces/{namespace}/pods/{pod}",
        data=json.dumps({"metadata": {"annotations": annotations}}).encode(),
        method="PATCH",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"},
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_pod_may_patch_only_its_own_progress(operator: Any, cluster: Any, kube: Any, kubectl: Any,
                                             namespace: str, pod_driver: Any) -> None:
    kubectl("apply", "-f", str(POLICY))
    apply(kubectl, namespace, trainingjob("guarded", resources={"nodes": 2, "cpu": "100m", "memory": "64Mi", "shmSize": ""}))
    pods = pod_driver.wait_pods("kubeforge.io/trainingjob=guarded", count=2, phase="Running")
    wait_phase(kube, namespace, "guarded", "Running")
    me, other = pods[0], pods[1]
    tr = kube.post(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/kubeforge-trainer/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"audiences": [], "expirationSeconds": 600,
                  "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": me["metadata"]["name"],
                                     "uid": me["metadata"]["uid"]}}},
    )
    token = tr["status"]["token"]
    progress = json.dumps({"seq": 1, "epoch": 1, "metrics": {"loss": 1.0}, "time": time.time()})
    # the policy takes a moment to be enforced after creation
    deadline = time.monotonic() + 20
    while patch_as(cluster, token, namespace, me["metadata"]["name"], {"x": str(time.time())}) != 403:
        assert time.monotonic() < deadline, "policy never enforced"
        time.sleep(0.5)
    assert patch_as(cluster, token, namespace, me["metadata"]["name"], {"kubeforge.io/progress": progress}) == 200
    assert patch_as(cluster, token, namespace, other["metadata"]["name"], {"kubeforge.io/progress": progress}) == 403
    assert patch_as(cluster, token, namespace, me["metadata"]["name"], {"kubeforge.io/stop": "x"}) == 403
    kube.wait_for("progress in status", lambda: kube.get(
        f"/apis/kubeforge.io/v1alpha1/namespaces/{namespace}/trainingjobs/guarded")["status"].get("progress"), timeout=20)
