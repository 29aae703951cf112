"""The local control plane does what the operator's tests rely on (issue 4)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import pytest
from kubeforge_cluster import AUTO_COMPLETE_LABEL, GPU_LABEL, GPU_RESOURCE, K8S_VERSION
from kubeforge_cluster.client import ApiError, KubeClient
from kubeforge_cluster.testing import Kubectl, PodDriver

pytestmark = pytest.mark.integration

KWOK_TOLERATIONS = [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]


def _pod_spec(**extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "busybox:1.36"}],
        "tolerations": list(KWOK_TOLERATIONS),
    }
    spec.update(extra)
    return spec


def _job(
    name: str, *, labels: dict[str, str] | None = None, completions: int = 1
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completions": completions,
            "parallelism": completions,
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels or {}},
                "spec": _pod_spec(restartPolicy="Never"),
            },
        },
    }


def _job_condition(kube: KubeClient, ns: str, name: str, cond: str) -> bool:
    job = kube.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
    return any(
        c["type"] == cond and c["status"] == "True"
        for c in job.get("status", {}).get("conditions", [])
    )


def test_kubectl_version_client_and_server(kubectl: Kubectl) -> None:
    v = json.loads(kubectl("version", "-o", "json"))
    if os.environ.get("KUBEFORGE_TEST_KUBECONFIG"):
        assert v["clientVersion"]["gitVersion"] and v["serverVersion"]["gitVersion"]
    else:
        assert v["clientVersion"]["gitVersion"] == K8S_VERSION
        assert v["serverVersion"]["gitVersion"] == K8S_VERSION


def test_deployment_gets_replicaset_and_ready_pods(
    kube: KubeClient, namespace: str, pod_driver: PodDriver
) -> None:
    kube.post(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": _pod_spec()},
            },
        },
    )
    rs = kube.wait_for(
        "ReplicaSet of deployment web",
        lambda: kube.get(
            f"/apis/apps/v1/namespaces/{namespace}/replicasets", query={"labelSelector": "app=web"}
        )["items"],
    )
    assert rs[0]["metadata"]["ownerReferences"][0]["name"] == "web"
    pods = pod_driver.wait_pods("app=web", count=3, phase="Running")
    for p in pods:
        assert p["spec"]["nodeName"].startswith("kwok-")
        assert any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"]
        )
    kube.wait_for(
        "deployment web 3/3 available",
        lambda: (
            kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/web")
            .get("status", {})
            .get("availableReplicas")
            == 3
        ),
    )


def test_job_completes_when_its_pod_succeeds(
    kube: KubeClient, namespace: str, pod_driver: PodDriver
) -> None:
    kube.post(f"/apis/batch/v1/namespaces/{namespace}/jobs", _job("train"))
    (pod,) = pod_driver.wait_pods("job-name=train", count=1, phase="Running")
    metrics = json.dumps({"metrics": {"accuracy": 0.93}})
    pod_driver.succeed(pod, message=metrics)
    kube.wait_for(
        "job train Complete", lambda: _job_condition(kube, namespace, "train", "Complete")
    )
    term = pod_driver.get(pod)["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0
    assert json.loads(term["message"]) == {"metrics": {"accuracy": 0.93}}


def test_labelled_job_pods_complete_on_their_own(kube: KubeClient, namespace: str) -> None:
    if os.environ.get("KUBEFORGE_TEST_KUBECONFIG"):
        pytest.skip("kwok auto-complete label exists only on the local cluster")
    kube.post(
        f"/apis/batch/v1/namespaces/{namespace}/jobs",
        _job("auto", labels={AUTO_COMPLETE_LABEL: "true"}, completions=2),
    )
    kube.wait_for("job auto Complete", lambda: _job_condition(kube, namespace, "auto", "Complete"))


def test_deleting_owner_garbage_collects_dependents(kube: KubeClient, namespace: str) -> None:
    owner = kube.post(
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}},
    )
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    for i in range(3):
        kube.post(
            f"/api/v1/namespaces/{namespace}/configmaps",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": f"dep-{i}",
                    "labels": {"dep": "yes"},
                    "ownerReferences": [ref],
                },
            },
        )
    kube.delete(f"/api/v1/namespaces/{namespace}/configmaps/owner")
    kube.wait_for(
        "dependents garbage-collected",
        lambda: (
            not kube.get(
                f"/api/v1/namespaces/{namespace}/configmaps", query={"labelSelector": "dep=yes"}
            )["items"]
        ),
    )


def test_gpu_pod_lands_only_on_gpu_node(
    cluster: Any, kube: KubeClient, namespace: str, pod_driver: PodDriver
) -> None:
    if not cluster.gpu_node_names:
        pytest.skip("cluster has no node labelled nvidia.com/gpu.present=true")
    tolerations = [
        *KWOK_TOLERATIONS,
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
    ]
    for i in range(3):
        kube.post(
            f"/api/v1/namespaces/{namespace}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"gpu-{i}", "labels": {"kind": "gpu"}},
                "spec": _pod_spec(
                    tolerations=tolerations,
                    containers=[
                        {
                            "name": "main",
                            "image": "trainer:dev",
                            "resources": {"limits": {GPU_RESOURCE: "2"}},
                        }
                    ],
                ),
            },
        )
    # a CPU pod without the GPU toleration never lands on the GPU node
    kube.post(
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "cpu", "labels": {"kind": "cpu"}},
            "spec": _pod_spec(),
        },
    )
    for p in pod_driver.wait_pods("kind=gpu", count=3, phase="Running"):
        node = kube.get(f"/api/v1/nodes/{p['spec']['nodeName']}")
        assert node["metadata"]["labels"].get(GPU_LABEL) == "true"
        assert p["spec"]["nodeName"] in cluster.gpu_node_names
    (cpu,) = pod_driver.wait_pods("kind=cpu", count=1, phase="Running")
    assert cpu["spec"]["nodeName"] not in cluster.gpu_node_names
    # more GPUs than any node has: stays Pending, unschedulable
    kube.post(
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "too-big"},
            "spec": _pod_spec(
                tolerations=tolerations,
                containers=[
                    {
                        "name": "main",
                        "image": "trainer:dev",
                        "resources": {"limits": {GPU_RESOURCE: "64"}},
                    }
                ],
            ),
        },
    )
    kube.wait_for(
        "too-big unschedulable",
        lambda: any(
            c["type"] == "PodScheduled" and c["status"] == "False"
            for c in pod_driver.get("too-big").get("status", {}).get("conditions", [])
        ),
    )


def test_rbac_refuses_service_account_without_rights(kubectl: Kubectl, namespace: str) -> None:
    r = kubectl.result(
        "auth",
        "can-i",
        "list",
        "pods",
        "-n",
        namespace,
        f"--as=system:serviceaccount:{namespace}:default",
    )
    assert r.stdout.strip() == "no", r.stdout + r.stderr
    r = kubectl.result(
        "get", "pods", "-n", namespace, f"--as=system:serviceaccount:{namespace}:default"
    )
    assert r.returncode != 0
    assert "forbidden" in r.stderr.lower()


def test_pod_driven_to_failed_shows_exit_code(
    kube: KubeClient, namespace: str, pod_driver: PodDriver
) -> None:
    kube.post(f"/apis/batch/v1/namespaces/{namespace}/jobs", _job("bad"))
    (pod,) = pod_driver.wait_pods("job-name=bad", count=1, phase="Running")
    pod_driver.fail(pod, exit_code=42, reason="Error", message="config invalid")
    p = pod_driver.get(pod)
    assert p["status"]["phase"] == "Failed"
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 42
    assert term["message"] == "config invalid"
    kube.wait_for("job bad Failed", lambda: _job_condition(kube, namespace, "bad", "Failed"))


def test_crashloop_pod_is_running_not_ready(
    kube: KubeClient, namespace: str, pod_driver: PodDriver
) -> None:
    kube.post(
        f"/api/v1/namespaces/{namespace}/pods",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crashy"}, "spec": _pod_spec()},
    )
    pod_driver.run("crashy")
    p = pod_driver.crashloop("crashy", exit_code=1, restarts=4)
    cs = p["status"]["containerStatuses"][0]
    assert p["status"]["phase"] == "Running"
    assert cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert cs["restartCount"] == 4 and cs["lastState"]["terminated"]["exitCode"] == 1


def test_prometheus_crds_install(prometheus_crds: list[str], kubectl: Kubectl) -> None:
    assert "servicemonitors.monitoring.coreos.com" in prometheus_crds
    assert "servicemonitors" in kubectl("api-resources", "--api-group=monitoring.coreos.com")


def test_api_errors_carry_status(kube: KubeClient, namespace: str) -> None:
    with pytest.raises(ApiError) as e:
        kube.get(f"/api/v1/namespaces/{namespace}/pods/nope")
    assert e.value.status == 404
    assert kube.get_if_exists(f"/api/v1/namespaces/{namespace}/pods/nope") is None
    assert kube.get_if_exists(f"/api/v1/namespaces/{namespace}")["metadata"]["name"] == namespace
    with pytest.raises(ApiError) as bad:  # only a 404 becomes None
        kube.get_if_exists(f"/api/v1/namespaces/{namespace}/pods?labelSelector=a%20b%20c")
    assert bad.value.status == 400


def test_kueue_admits_a_queued_job(kueue: Any, kube: KubeClient, namespace: str) -> None:
    kq = "/apis/kueue.x-k8s.io/v1beta2"
    flavor, cq = f"flavor-{namespace}", f"cq-{namespace}"
    kube.post(
        f"{kq}/resourceflavors",
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": flavor},
        },
    )
    kube.post(
        f"{kq}/clusterqueues",
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": cq},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", GPU_RESOURCE],
                        "flavors": [
                            {
                                "name": flavor,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "4"},
                                    {"name": "memory", "nominalQuota": "8Gi"},
                                    {"name": GPU_RESOURCE, "nominalQuota": "8"},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
    )
    kube.post(
        f"{kq}/namespaces/{namespace}/localqueues",
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "lq"},
            "spec": {"clusterQueue": cq},
        },
    )
    try:
        for name, cpu in (("fits", "2"), ("too-big", "16")):
            job = _job(name)
            job["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "lq"}
            job["spec"]["template"]["spec"]["containers"][0]["resources"] = {
                "requests": {"cpu": cpu, "memory": "1Gi"}
            }
            created = kube.post(f"/apis/batch/v1/namespaces/{namespace}/jobs", job)
            assert created["spec"]["suspend"] is True  # kueue's mutating webhook
        kube.wait_for(
            "job fits unsuspended by kueue",
            lambda: (
                kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/fits")["spec"]["suspend"]
                is False
            ),
        )
        time.sleep(1)
        assert kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/too-big")["spec"]["suspend"]
    finally:
        for n in ("fits", "too-big"):
            with contextlib.suppress(ApiError):
                kube.delete(
                    f"/apis/batch/v1/namespaces/{namespace}/jobs/{n}",
                    query={"propagationPolicy": "Background"},
                )
        with contextlib.suppress(ApiError):
            kube.delete(f"{kq}/namespaces/{namespace}/localqueues/lq")
        with contextlib.suppress(ApiError):
            kube.delete(f"{kq}/clusterqueues/{cq}")
        with contextlib.suppress(ApiError):
            kube.delete(f"{kq}/resourceflavors/{flavor}")
