"""`helm upgrade` rolls the operator without touching running TrainingJobs; the CRD upgrade path
(Helm never upgrades crds/: `kubectl apply --server-side --force-conflicts -f crds/`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import TERMINATION, TJ_PATH, capture, get_tj, training_job, wait_phase
from kubeforge_cluster.chartops import NAMESPACE, RELEASE
from kubeforge_cluster.client import KubeClient
from kubeforge_cluster.helm import CHART, Helm
from kubeforge_cluster.testing import Kubectl, PodDriver

pytestmark = pytest.mark.integration

CRD = "trainingjobs.kubeforge.io"


def deployment(kube: KubeClient) -> dict[str, Any]:
    d: dict[str, Any] = kube.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{RELEASE}")
    return d


def env_of(dep: dict[str, Any]) -> dict[str, str]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in c["env"]}


def test_helm_upgrade_rolls_the_operator_not_the_trainingjobs(
    helm: Helm,
    release: str,
    start_operator: Any,
    kube: KubeClient,
    namespace: str,
    pod_driver: PodDriver,
) -> None:
    op = start_operator()
    kube.post(TJ_PATH.format(ns=namespace), training_job("survives-upgrade"))
    (pod,) = pod_driver.wait_pods("kubeforge.io/trainingjob=survives-upgrade")
    pod_driver.run(pod)
    before = wait_phase(kube, namespace, "survives-upgrade", {"Running"})
    job = kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/survives-upgrade")
    dep_before = deployment(kube)

    op.stop()  # the old operator goes first (here a process; in the cluster the Lease decides)
    helm(
        "upgrade",
        release,
        str(CHART),
        "-n",
        NAMESPACE,
        "--reuse-values",
        "--set",
        "operator.logLevel=DEBUG",
        "--set",
        "operator.concurrency=4",
    )
    dep_after = deployment(kube)
    assert dep_after["metadata"]["generation"] == dep_before["metadata"]["generation"] + 1
    assert dep_after["spec"]["strategy"]["type"] == "RollingUpdate"
    assert env_of(dep_after)["KUBEFORGE_LOG_LEVEL"] == "DEBUG"
    assert env_of(dep_after)["KUBEFORGE_CONCURRENCY"] == "4"
    history = json.loads(helm("history", release, "-n", NAMESPACE, "-o", "json").stdout)
    assert history[-1]["status"] == "deployed" and len(history) >= 2

    # nothing the user owns, nor its children, was touched
    after = get_tj(kube, namespace, "survives-upgrade")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"] == before["spec"]
    job_after = kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/survives-upgrade")
    assert job_after["metadata"]["uid"] == job["metadata"]["uid"]
    pod_after = pod_driver.get(pod)
    assert pod_after["metadata"]["uid"] == pod["metadata"]["uid"]
    assert pod_after["status"]["phase"] == "Running"

    # the new operator (the upgraded release's env) takes over where the old one stopped
    new = start_operator()
    assert new.env["KUBEFORGE_LOG_LEVEL"] == "DEBUG"
    pod_driver.succeed(pod, message=json.dumps(TERMINATION))
    done = wait_phase(kube, namespace, "survives-upgrade", {"Succeeded"})
    assert done["status"]["metrics"] == TERMINATION["metrics"]
    capture("TrainingJob", done)


def test_crds_upgrade_with_server_side_apply_not_helm(
    helm: Helm,
    release: str,
    kubectl: Kubectl,
    kube: KubeClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    # an object stored under the current CRDs
    kube.post(TJ_PATH.format(ns=namespace), training_job("kept-across-crd-upgrade"))
    # "the next chart version": same chart, a CRD that changed
    chart = tmp_path / "kubeforge"
    shutil.copytree(CHART, chart)
    crd_file = chart / "crds" / "kubeforge.io_trainingjobs.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    crd["metadata"].setdefault("annotations", {})["kubeforge.io/crd-revision"] = "next"
    version = crd["spec"]["versions"][0]
    version["additionalPrinterColumns"] = [
        *version.get("additionalPrinterColumns", []),
        {"name": "Upgraded", "type": "string", "jsonPath": ".status.message", "priority": 1},
    ]
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))

    def live() -> dict[str, Any]:
        obj: dict[str, Any] = kube.get(
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD}"
        )
        return obj

    try:
        helm("upgrade", release, str(chart), "-n", NAMESPACE, "--reuse-values")
        assert "kubeforge.io/crd-revision" not in (live()["metadata"].get("annotations") or {}), (
            "helm upgraded crds/: the documented path assumes it never does"
        )
        # the documented path (charts/kubeforge/README.md)
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(chart / "crds"))
        upgraded = live()
        assert upgraded["metadata"]["annotations"]["kubeforge.io/crd-revision"] == "next"
        cols = [c["name"] for c in upgraded["spec"]["versions"][0]["additionalPrinterColumns"]]
        assert "Upgraded" in cols
        kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=30s")
        assert get_tj(kube, namespace, "kept-across-crd-upgrade")["spec"]["model"] == {
            "recipe": "mlp-classifier"
        }
    finally:
        # and back: the same command with the current chart removes what it no longer applies
        helm("upgrade", release, str(CHART), "-n", NAMESPACE, "--reuse-values")
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    restored = live()
    assert "kubeforge.io/crd-revision" not in (restored["metadata"].get("annotations") or {})
    cols = [c["name"] for c in restored["spec"]["versions"][0].get("additionalPrinterColumns", [])]
    assert "Upgraded" not in cols
