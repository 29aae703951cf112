"""A TrainingJob reconciled by the operator (a local process against the real-node cluster)
whose pod runs the project's trainer image: real training of the digits MLP in a container,
progress POSTed from the pod to the operator's endpoint with its projected token (bound to the
pod, audience kubeforge.io/progress; the pod has no API token), Succeeded with the real metrics, and a
delete that cascades to the Job and its pods.

The trainer image is big (torch from PyPI bundles CUDA: ~6 GB unpacked), so this test never
builds it: it runs where ``KUBEFORGE_TEST_TRAINER_IMAGE=1 make test-deps`` has built
``cluster/images/out/kubeforge-trainer.oci.tar`` from the trainer's Dockerfile (BuildKit) and skips
with that reason elsewhere. The import into the node's image store happens once (kept in
``~/.cache/kubeforge/node``), later runs find it there."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from kubeforge_cluster.realnode import RealNode, net
from realpods_support import (
    TRAINER_IMAGE,
    Kube,
    digits_trainingjob,
    install_crds,
    require_trainer_archive,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]



@pytest.fixture(scope="module")
def operator(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    trainer_archive = require_trainer_archive()
    from integration.kf_operator_process import OperatorProcess

    t = time.monotonic()
    imported = real_node.import_images([trainer_archive])
    print(f"trainer image {'imported' if imported else 'present'} ({time.monotonic() - t:.1f}s)")
    install_crds(real_node)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    # the progress endpoint listens on the node's bridge IP, which pods reach (REALPODS.md)
    op = OperatorProcess(
        str(real_node.kubeconfig),
        log,
        progress_address=net.NODE_IP,
        KUBEFORGE_TRAINER_IMAGE=TRAINER_IMAGE,
        KUBEFORGE_NAMESPACES="rp-test",
    )
    op.env["KUBEFORGE_PROGRESS_URL"] = op.progress_endpoint
    op.start()
    try:
        yield op
    finally:
        op.stop()
        print(f"operator log tail:\n{op.logs(20)}")


@pytest.mark.timeout(600)
def test_trainingjob_trains_in_the_trainer_image(
    real_node: RealNode, kube: Kube, operator: object
) -> None:
    kube.apply(digits_trainingjob("digits", epochs=6))
    t = time.monotonic()
    try:
        st = kube.wait_final("trainingjob", "digits")
    except AssertionError:
        print(kube.k("logs", "-l", "job-name=digits", "--tail=40", check=False))
        print(operator.logs(40))  # type: ignore[attr-defined]
        raise
    took = time.monotonic() - t
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    metrics = st["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["val_accuracy"] > 0.9
    assert metrics["epoch"] == 6
    arts = st["artifacts"]
    assert isinstance(arts, dict)
    assert str(arts["model"]).endswith("model.onnx") and len(str(arts["sha256"])) == 64
    # the pod reported through the endpoint (pod -> 10.88.0.1:PORT), authenticated by TokenReview
    progress = st["progress"]
    assert isinstance(progress, dict) and int(progress["step"]) > 0
    accepted = [
        line for line in operator.metrics().splitlines()  # type: ignore[attr-defined]
        if line.startswith("kubeforge_progress_reports_total")
    ]
    assert accepted and float(accepted[0].rsplit(" ", 1)[1]) > 0, accepted
    print(f"TrainingJob Succeeded {took:.1f}s after apply: {metrics}")
    assert net.check_guard_counters() == []

    # deleting the TrainingJob cascades to its Job and pods
    kube.k("delete", "trainingjob", "digits", "--wait=true", "--timeout=60s")

    def gone() -> bool:
        jobs = kube.k("get", "jobs", "--ignore-not-found", "-o", "name")
        pods = json.loads(kube.k("get", "pods", "-l", "job-name=digits", "-o", "json"))
        return "job.batch/digits" not in jobs and not pods["items"]

    kube.wait("Job and pods of digits deleted", gone, timeout=60)
