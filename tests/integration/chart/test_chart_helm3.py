"""The chart with Helm 3 (when `cluster/build.py --helm3` built it): install, upgrade, uninstall
into the real cluster, beside the Helm 4 release of the other tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubeforge_cluster.chartops import install
from kubeforge_cluster.helm import CHART, Helm, find_helm
from kubeforge_cluster.testing import Kubectl

pytestmark = pytest.mark.integration

RELEASE3, NS3 = "kf3", "kubeforge-helm3"


def test_helm3_install_upgrade_uninstall(
    cluster: Any, release: str, kubectl: Kubectl, tmp_path: Path, namespace: str
) -> None:
    path = find_helm("helm3")
    if path is None:
        pytest.skip("no helm3 binary (python cluster/build.py --helm3)")
    helm3 = Helm(path, kubeconfig=cluster.kubeconfig, home=tmp_path)
    assert helm3.major == 3
    # every cluster-scoped object is named after the release, so both releases coexist
    values = {"watchNamespaces": [namespace]}
    try:
        install(helm3, values, release=RELEASE3, namespace=NS3)
        st = json.loads(helm3("status", RELEASE3, "-n", NS3, "-o", "json").stdout)
        assert st["info"]["status"] == "deployed"
        dep = kubectl.json("get", "deployment", f"{RELEASE3}-kubeforge", "-n", NS3)
        assert dep["spec"]["strategy"]["type"] == "RollingUpdate"  # leader election: 2 replicas
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert c["args"] == [f"--namespace={namespace}", "--metrics-port=8000"]
        rb = kubectl.json("get", "rolebinding", f"{RELEASE3}-kubeforge", "-n", namespace)
        assert rb["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",  # watchNamespaces: a Role per namespace, no namespaced ClusterRole
            "name": f"{RELEASE3}-kubeforge",
        }
        kubectl("get", "role", f"{RELEASE3}-kubeforge", "-n", namespace)
        kubectl("get", "clusterrole", f"{RELEASE3}-kubeforge-discovery")
        assert kubectl.result("get", "clusterrole", f"{RELEASE3}-kubeforge").returncode != 0
        helm3(
            "upgrade",
            RELEASE3,
            str(CHART),
            "-n",
            NS3,
            "--reuse-values",
            "--set",
            "operator.logLevel=DEBUG",
        )
        dep = kubectl.json("get", "deployment", f"{RELEASE3}-kubeforge", "-n", NS3)
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert {"name": "KUBEFORGE_LOG_LEVEL", "value": "DEBUG"} in c["env"]
        bad = helm3(
            "upgrade",
            RELEASE3,
            str(CHART),
            "-n",
            NS3,
            "--reuse-values",
            "--set",
            "image.pullPolicy=Sometimes",
            check=False,
        )
        assert bad.returncode != 0 and "pullPolicy" in bad.stderr, bad.stderr
    finally:
        helm3("uninstall", RELEASE3, "-n", NS3, check=False)
    gone = kubectl.result("get", "clusterrole", f"{RELEASE3}-kubeforge-discovery")
    assert gone.returncode != 0
    # uninstall keeps the CRDs (and every object of the three kinds)
    kubectl("get", "crd", "trainingjobs.kubeforge.io")
