"""The Helm chart installs the operator as a real pod (the project's operator image, its own
ServiceAccount and RBAC, talking to the API server through ``kubernetes.default.svc``), and that
in-cluster operator runs a TrainingJob in the trainer image to Succeeded.

Needs the trainer image archive (~3.4 GB: ``KUBEFORGE_TEST_TRAINER_IMAGE=1 make test-deps``
builds it from its Dockerfile; skipped with that reason elsewhere); the operator image is built
(cached layers) and imported by the test."""

from __future__ import annotations

import subprocess
import time

import pytest
from kubeforge_cluster import binaries
from kubeforge_cluster.realnode import RealNode, net
from realpods_support import REPO, Kube, build_image, digits_trainingjob, require_trainer_archive

pytestmark = [pytest.mark.e2e, pytest.mark.slow]



@pytest.mark.timeout(600)
def test_chart_operator_in_cluster_runs_a_trainingjob(real_node: RealNode, kube: Kube) -> None:
    trainer_archive = require_trainer_archive()
    helm = binaries.find_binary("helm")
    if helm is None:
        pytest.skip("helm not built (make cluster-bins)")
    op_archive = build_image("operator")
    real_node.import_images([op_archive, trainer_archive])

    t = time.monotonic()
    r = subprocess.run(
        [
            str(helm),
            f"--kubeconfig={real_node.kubeconfig}",
            "install",
            "kubeforge",
            str(REPO / "charts" / "kubeforge"),
            "-n",
            "kubeforge-system",
            "--create-namespace",
            "--set",
            "image.repository=local/kubeforge-operator",
            "--set",
            "image.tag=dev",
            "--set",
            "images.trainer=local/kubeforge-trainer:dev",
            "--set",
            "images.server=local/kubeforge-server:dev",
            "--wait",
            "--timeout",
            "180s",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if r.returncode != 0:
        logs = real_node.kubectl(
            "-n", "kubeforge-system", "logs", "deploy/kubeforge", "--tail=30", check=False
        )
        pytest.fail(f"helm install failed: {r.stderr}\noperator log:\n{logs.stdout}{logs.stderr}")
    print(f"chart installed, operator pod Available in {time.monotonic() - t:.1f}s")

    kube.apply(digits_trainingjob("digits-incluster", epochs=4))
    t = time.monotonic()
    st = kube.wait_final("trainingjob", "digits-incluster")
    assert st["phase"] == "Succeeded", st
    metrics = st["metrics"]
    assert isinstance(metrics, dict) and metrics["val_accuracy"] > 0.9
    print(f"in-cluster operator: TrainingJob Succeeded in {time.monotonic() - t:.1f}s: {metrics}")
    assert net.check_guard_counters() == []
    assert net.check_listeners() == []
