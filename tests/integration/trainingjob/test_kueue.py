"""TrainingJob with the real Kueue controller: admitted and run; over quota it stays Queued with
Kueue's reason; kubeforge never fights Kueue over the Job's spec.suspend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kf_operator_process import OperatorProcess
from tj_support import RESULT, apply, get_tj, trainingjob, wait_phase

pytestmark = pytest.mark.integration

KUEUE = "kueue.x-k8s.io/v1beta2"


@pytest.fixture(scope="module")
def kueue_operator(cluster: Any, kueue: Any, kubeforge_crds: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """An operator started after Kueue, so it indexes Workloads."""
    op = OperatorProcess(str(cluster.kubeconfig), tmp_path_factory.mktemp("op-kueue") / "operator.log")
    op.start()
    yield op
    op.stop()


def queues(kubectl: Any, namespace: str) -> None:
    docs = [
        {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": f"flavor-{namespace}"}},
        {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": f"cq-{namespace}"},
         "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                  "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [
                      {"name": f"flavor-{namespace}", "resources": [
                          {"name": "cpu", "nominalQuota": "1"}, {"name": "memory", "nominalQuota": "2Gi"}]}]}]}},
        {"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": "team", "namespace": namespace},
         "spec": {"clusterQueue": f"cq-{namespace}"}},
    ]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def test_queued_admitted_and_over_quota(kueue_operator: Any, kube: Any, kubectl: Any, namespace: str, pod_driver: Any) -> None:
    queues(kubectl, namespace)
    res = {"cpu": "600m", "memory": "256Mi", "shmSize": ""}
    apply(kubectl, namespace, trainingjob("first", resources=res, scheduling={"queueName": "team"}))
    # admitted as one gang: Kueue unsuspends, pods run
    (p,) = pod_driver.wait_pods("kubeforge.io/trainingjob=first", count=1, phase="Running", timeout=60)
    st = wait_phase(kube, namespace, "first", "Running")
    assert next(c for c in st["status"]["conditions"] if c["type"] == "Admitted")["status"] == "True"
    job = kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/first")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team"
    assert job["spec"]["suspend"] is False
    # kubeforge holds no Apply ownership of spec.suspend
    for mf in job["metadata"].get("managedFields", []):
        if mf.get("manager") == "kubeforge" and mf.get("operation") == "Apply":
            assert "f:suspend" not in json.dumps(mf.get("fieldsV1", {}))

    # over quota: stays Queued with Kueue's reason
    apply(kubectl, namespace, trainingjob("second", resources=res, scheduling={"queueName": "team"}))
    st = wait_phase(kube, namespace, "second", "Queued", timeout=30)
    adm = kube.wait_for("Kueue's reason", lambda: next(
        (c for c in get_tj(kube, namespace, "second")["status"]["conditions"]
         if c["type"] == "Admitted" and "quota" in c.get("message", "")), None), timeout=30)
    assert adm["status"] == "False"
    assert pod_driver.pods("kubeforge.io/trainingjob=second") == []

    # the first finishes, releases its quota, the second is admitted
    pod_driver.succeed(p, message=json.dumps(RESULT))
    wait_phase(kube, namespace, "first", "Succeeded")
    pod_driver.wait_pods("kubeforge.io/trainingjob=second", count=1, phase="Running", timeout=60)
    wait_phase(kube, namespace, "second", "Running")
